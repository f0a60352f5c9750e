// Sovereign in the browser: an LLM engine on WebGPU, running in a Web Worker.
//
//   import { Sovereign } from './sovereign.js';
//   const engine = await Sovereign.create();
//   await engine.load('/models/SmolLM2-135M-Instruct.Q4_1.gguf', { onProgress: console.log });
//   const stream = await engine.chat.completions.create({ messages, stream: true });
//   for await (const chunk of stream) output.textContent += chunk.choices[0].delta.content ?? '';

/** An error as OpenAI's API reports it: `status`, `type`, `code` and `param` say what went wrong. */
export class SovereignError extends Error {
  constructor({ message, type = 'server_error', code = null, param = null, status = 500 }) {
    super(message);
    this.name = 'SovereignError';
    this.type = type;
    this.code = code;
    this.param = param;
    this.status = status;
  }
}

/** True when this browser exposes WebGPU at all (the engine needs it). */
export function hasWebGPU() {
  return typeof navigator !== 'undefined' && 'gpu' in navigator && !!navigator.gpu;
}

/** The chunks of one streamed request, as an async iterable; `cancel()` stops generation. */
export class Stream {
  #queue = [];
  #waiting = null;
  #ended = false;
  #error = null;
  #cancel;

  constructor(cancel) {
    this.#cancel = cancel;
    /** Resolves with the last chunk (finish_reason, usage, timings) once the stream ends. */
    this.done = new Promise((resolve, reject) => {
      this.finish = resolve;
      this.fail = reject;
    });
    this.done.catch(() => {});
  }

  push(chunk) {
    this.#queue.push(chunk);
    if (chunk.choices?.[0]?.finish_reason) this.finish(chunk);
    this.#wake();
  }

  end(error) {
    this.#ended = true;
    this.#error = error ?? null;
    if (error) this.fail(error);
    this.#wake();
  }

  #wake() {
    const w = this.#waiting;
    this.#waiting = null;
    if (w) w();
  }

  /** Stops generation at once; the stream still ends with its last chunk. */
  cancel() {
    this.#cancel();
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      if (this.#queue.length) {
        yield this.#queue.shift();
      } else if (this.#ended) {
        if (this.#error) throw this.#error;
        return;
      } else {
        await new Promise((resolve) => { this.#waiting = resolve; });
      }
    }
  }
}

export class Sovereign {
  #worker;
  #next = 1;
  #pending = new Map();

  /**
   * Starts the engine's worker and opens the WebGPU adapter. Rejects with code
   * `webgpu_unavailable` where the browser has no WebGPU.
   */
  static async create({ workerUrl } = {}) {
    if (!hasWebGPU()) {
      throw new SovereignError({
        message: 'This browser does not support WebGPU. Use a recent Chrome, Edge or Safari, or enable WebGPU in the browser settings.',
        code: 'webgpu_unavailable',
        status: 501,
      });
    }
    const worker = new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' });
    const engine = new Sovereign(worker);
    /** The adapter: name, backend, shader_f16, subgroups, limits. */
    engine.adapter = await engine.#call({ type: 'init' });
    return engine;
  }

  constructor(worker) {
    this.#worker = worker;
    this.#worker.onmessage = (event) => this.#receive(event.data);
    this.#worker.onerror = (event) => {
      const error = new SovereignError({ message: `the engine worker failed: ${event.message ?? 'unknown error'}` });
      for (const p of this.#pending.values()) p.reject(error);
      this.#pending.clear();
    };
    this.model = null;
    this.chat = { completions: { create: (body, options) => this.#generate('chat', body, options) } };
    this.completions = { create: (body, options) => this.#generate('completions', body, options) };
    // OpenAI's embeddings.create: a vector per input (numbers, or base64 when asked).
    this.embeddings = { create: (body) => this.#call({ type: 'embeddings', body }) };
  }

  #receive(message) {
    if (message.type === 'warning') {
      console.warn(`sovereign: ${message.message}`);
      return;
    }
    const p = this.#pending.get(message.id);
    if (!p) return;
    switch (message.type) {
      case 'progress': p.onProgress?.(message.progress); break;
      case 'chunk': p.onChunk?.(message.chunk); break;
      case 'accepted': p.onAccepted?.(); break;
      case 'result': this.#pending.delete(message.id); p.resolve(message.value); break;
      case 'error': this.#pending.delete(message.id); p.reject(new SovereignError(message.error)); break;
    }
  }

  #call(message, handlers = {}) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...handlers });
      this.#worker.postMessage({ ...message, id });
    });
  }

  /**
   * Loads a GGUF model from a URL (downloaded once, then kept in browser storage) or from a
   * `File`/`Blob` the user picked. `onProgress({phase, loaded, total})` follows the phases
   * `cache`, `download` or `read`, then `upload` (to the GPU).
   */
  async load(source, { onProgress, contextSize = 2048, sequences = 2, cache = true } = {}) {
    if (!(typeof source === 'string' || source instanceof Blob)) {
      throw new SovereignError({ message: 'load() takes a URL or a File', code: 'invalid_value', param: 'source', status: 400 });
    }
    this.model = await this.#call(
      { type: 'load', source, options: { contextSize, sequences, cache } },
      { onProgress },
    );
    return this.model;
  }

  #generate(endpoint, body, { signal } = {}) {
    const id = this.#next++;
    const stream = new Stream(() => this.#worker.postMessage({ id: this.#next++, type: 'cancel', target: id }));
    signal?.addEventListener('abort', () => stream.cancel(), { once: true });
    let accept;
    let refuse;
    // Like OpenAI's client, a streamed create() resolves once the request is accepted and
    // rejects when it is refused (bad parameters, a prompt longer than the context).
    const accepted = new Promise((resolve, reject) => { accept = resolve; refuse = reject; });
    const finished = new Promise((resolve, reject) => {
      this.#pending.set(id, {
        resolve: () => { accept(); stream.end(); resolve(); },
        reject: (e) => { refuse(e); stream.end(e); reject(e); },
        onAccepted: () => accept(),
        onChunk: (chunk) => stream.push(chunk),
      });
    });
    finished.catch(() => {});
    this.#worker.postMessage({ id, type: 'generate', endpoint, body: { ...body, stream: true } });
    if (body?.stream) return accepted.then(() => stream);
    return finished.then(() => collect(endpoint, stream));
  }

  /** The engine's counters: requests, tokens, KV pages, decode tokens/s. */
  stats() {
    return this.#call({ type: 'stats' });
  }

  /** Aggregate decode tokens/s of `streams` concurrent greedy streams (as `sovereign bench --streams`). */
  bench({ streams = 1, nPrompt = 64, nGen = 48 } = {}) {
    return this.#call({ type: 'bench', streams, nPrompt, nGen });
  }

  /** Every kernel on this adapter against its CPU reference: `[{name, max_error, tolerance, passed}]`. */
  kernelChecks() {
    return this.#call({ type: 'kernelChecks' });
  }

  /** URLs of the models kept in browser storage. */
  cachedModels() {
    return this.#call({ type: 'cachedModels' });
  }

  /** Drops a model from browser storage. */
  evict(url) {
    return this.#call({ type: 'evict', url });
  }

  /** Stops the worker and frees the GPU memory it holds. */
  terminate() {
    this.#worker.terminate();
    for (const p of this.#pending.values()) p.reject(new SovereignError({ message: 'the engine was terminated' }));
    this.#pending.clear();
  }
}

// A streamed request gathered into OpenAI's non-streaming response.
async function collect(endpoint, stream) {
  let text = '';
  const tokenIds = [];
  const toolCalls = [];
  let last = null;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    text += (endpoint === 'chat' ? choice.delta?.content : choice.text) ?? '';
    // Calls come whole, each in one delta.
    for (const { index, ...call } of choice.delta?.tool_calls ?? []) toolCalls[index] = call;
    tokenIds.push(...(chunk.sovereign?.token_ids ?? []));
    last = chunk;
  }
  const finish = last?.choices[0].finish_reason ?? 'stop';
  const message = toolCalls.length
    ? { role: 'assistant', content: null, tool_calls: toolCalls }
    : { role: 'assistant', content: text };
  const choice = endpoint === 'chat'
    ? { index: 0, message, logprobs: null, finish_reason: finish }
    : { index: 0, text, logprobs: null, finish_reason: finish };
  return {
    id: last?.id,
    object: endpoint === 'chat' ? 'chat.completion' : 'text_completion',
    created: last?.created,
    model: last?.model,
    choices: [choice],
    usage: last?.usage,
    sovereign: { ...last?.sovereign, token_ids: tokenIds },
  };
}
