// The engine's Web Worker: it owns the WebAssembly module and the GPU device, so downloads,
// uploads and generation never block the page. `sovereign.js` is the only thing that talks to it.
import init, { createEngine } from './pkg/sovereign_web.js';

const CACHE_NAME = 'sovereign-models-v1';
let engine = null;

function post(message, transfer) {
  self.postMessage(message, transfer ?? []);
}

// Every failure crosses as a plain object with OpenAI's error fields.
function describe(error) {
  if (error && typeof error === 'object' && error.error && typeof error.error === 'object') {
    return { ...error.error, status: error.status ?? 500 };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { message, type: 'server_error', code: null, param: null, status: 500 };
}

async function openCache() {
  try {
    return self.caches ? await self.caches.open(CACHE_NAME) : null;
  } catch {
    // Storage can be off (private windows, quotas): downloads still work, uncached.
    return null;
  }
}

// Reads a response body into one buffer, reporting progress at most every 1/200 of the file.
async function readBody(response, onProgress) {
  const total = Number(response.headers.get('content-length')) || 0;
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onProgress(bytes.length, bytes.length);
    return bytes;
  }
  const reader = response.body.getReader();
  let bytes = new Uint8Array(total || 1 << 20);
  let loaded = 0;
  let reported = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > bytes.length) {
      const grown = new Uint8Array(Math.max(bytes.length * 2, loaded + value.length));
      grown.set(bytes.subarray(0, loaded));
      bytes = grown;
    }
    bytes.set(value, loaded);
    loaded += value.length;
    if (loaded - reported >= (total || 1 << 24) / 200) {
      reported = loaded;
      onProgress(loaded, total);
    }
  }
  onProgress(loaded, total || loaded);
  return loaded === bytes.length ? bytes : bytes.slice(0, loaded);
}

async function download(url, useCache, onProgress) {
  const cache = useCache ? await openCache() : null;
  const hit = cache ? await cache.match(url) : undefined;
  if (hit) {
    return { bytes: await readBody(hit, (l, t) => onProgress('cache', l, t)), cached: true };
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot download ${url}: ${e.message}`);
  }
  if (!response.ok) {
    throw new Error(`cannot download ${url}: HTTP ${response.status} ${response.statusText}`);
  }
  const bytes = await readBody(response, (l, t) => onProgress('download', l, t));
  if (cache) {
    try {
      await cache.put(url, new Response(bytes, {
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) },
      }));
    } catch (e) {
      post({ type: 'warning', message: `the model was not kept in browser storage: ${e.message}` });
    }
  }
  return { bytes, cached: false };
}

const handlers = {
  async init() {
    await init();
    // WebGPU hides the device type; software adapters (SwiftShader, the fallback adapter) name
    // themselves in the adapter info, and the kernels have shapes made for CPUs.
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) {
      throw {
        status: 501,
        error: {
          message: 'This browser has WebGPU but offers no GPU adapter to it (hardware acceleration may be off, or the GPU is blocked).',
          type: 'server_error',
          code: 'webgpu_unavailable',
          param: null,
        },
      };
    }
    const info = adapter.info ?? {};
    const software = /swiftshader|llvmpipe|lavapipe|warp|software/i;
    const cpu = Boolean(info.isFallbackAdapter) ||
      software.test(`${info.vendor ?? ''} ${info.architecture ?? ''} ${info.description ?? ''} ${info.device ?? ''}`);
    // wgpu's web backend neither asks for WebGPU's 'subgroups' feature nor reports it, so its
    // device request gets the feature added here, and the engine is told.
    const subgroups = adapter.features.has('subgroups');
    if (subgroups && !GPUAdapter.prototype.requestDevice.sovereignSubgroups) {
      const requestDevice = GPUAdapter.prototype.requestDevice;
      const withSubgroups = function (descriptor = {}) {
        const features = [...(descriptor.requiredFeatures ?? [])];
        if (this.features.has('subgroups') && !features.includes('subgroups')) {
          features.push('subgroups');
        }
        return requestDevice.call(this, { ...descriptor, requiredFeatures: features });
      };
      withSubgroups.sovereignSubgroups = true;
      GPUAdapter.prototype.requestDevice = withSubgroups;
    }
    engine = await createEngine(cpu, subgroups);
    return {
      ...engine.adapter(),
      vendor: info.vendor ?? '',
      architecture: info.architecture ?? '',
      description: info.description ?? '',
    };
  },

  async load({ id, source, options }) {
    const progress = (phase, loaded, total) => post({ id, type: 'progress', progress: { phase, loaded, total } });
    let bytes;
    let cached = false;
    if (typeof source === 'string') {
      ({ bytes, cached } = await download(new URL(source, self.location.href).href, options.cache !== false, progress));
    } else {
      // A File or Blob the user picked.
      bytes = new Uint8Array(await source.arrayBuffer());
      progress('read', bytes.length, bytes.length);
    }
    const model = await engine.load(bytes, { context_size: options.contextSize, sequences: options.sequences },
      (done, total) => progress('upload', done, total));
    return { ...model, cached, bytes: bytes.length };
  },

  async generate({ id, endpoint, body }) {
    const running = engine.generate(id, endpoint, JSON.stringify(body), (chunk) => post({ id, type: 'chunk', chunk }));
    // A request the engine refuses is rejected before any task runs; past that it is accepted.
    await Promise.race([running, new Promise((resolve) => setTimeout(resolve, 0))]);
    post({ id, type: 'accepted' });
    await running;
    return null;
  },

  embeddings({ body }) {
    return engine.embeddings(JSON.stringify(body));
  },

  cancel({ target }) {
    return engine ? engine.cancel(target) : false;
  },

  stats() {
    return engine ? engine.stats() : null;
  },

  bench({ streams, nPrompt, nGen }) {
    return engine.bench(streams, nPrompt, nGen);
  },

  kernelChecks() {
    return engine.kernelChecks();
  },

  async cachedModels() {
    const cache = await openCache();
    return cache ? (await cache.keys()).map((r) => r.url) : [];
  },

  async evict({ url }) {
    const cache = await openCache();
    return cache ? cache.delete(new URL(url, self.location.href).href) : false;
  },
};

self.onmessage = async (event) => {
  const message = event.data;
  const handler = handlers[message.type];
  if (!handler) {
    post({ id: message.id, type: 'error', error: describe(new Error(`unknown request ${message.type}`)) });
    return;
  }
  try {
    if (message.type !== 'init' && !engine) throw new Error('the engine is not started');
    const value = await handler(message);
    post({ id: message.id, type: 'result', value });
  } catch (error) {
    post({ id: message.id, type: 'error', error: describe(error) });
  }
};
