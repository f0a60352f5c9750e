// The demo page: load a model, chat with it, see what the engine does. Everything runs through
// the public JS API (sovereign.js), as an embedding page would use it.
import { Sovereign, hasWebGPU } from './sovereign.js';

const $ = (id) => document.getElementById(id);
const conversation = [];
let engine = null;
let current = null;

function showError(error) {
  $('error').textContent = error ? `${error.message}${error.code ? ` (${error.code})` : ''}` : '';
}

function megabytes(n) {
  return `${(n / 1048576).toFixed(n < 10485760 ? 1 : 0)} MB`;
}

function setProgress({ phase, loaded, total }) {
  $('progress').hidden = false;
  const fraction = total ? loaded / total : 0;
  $('progress-fill').style.width = `${(fraction * 100).toFixed(1)}%`;
  const verb = { download: 'Downloading', cache: 'Reading from browser storage', read: 'Reading file', upload: 'Uploading to the GPU' }[phase] ?? phase;
  $('progress-text').textContent = `${verb}: ${megabytes(loaded)}${total ? ` of ${megabytes(total)}` : ''}`;
}

function setBusy(busy) {
  $('send').disabled = busy || !engine?.model;
  $('prompt').disabled = !engine?.model;
  $('stop').hidden = !busy;
}

async function load(source) {
  showError(null);
  setBusy(true);
  $('prompt').disabled = true;
  try {
    const model = await engine.load(source, { onProgress: setProgress });
    $('model-info').textContent = `${model.name}: ${model.n_ctx} tokens of context, ` +
      `${megabytes(model.weight_bytes)} of weights on the GPU` + (model.cached ? ', loaded from browser storage' : '');
    $('progress').hidden = true;
    conversation.length = 0;
    $('messages').replaceChildren();
  } catch (error) {
    showError(error);
    $('progress').hidden = true;
  }
  setBusy(false);
  if (engine.model) $('prompt').focus();
}

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = `message ${role}`;
  div.textContent = text;
  $('messages').append(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

async function send() {
  const text = $('prompt').value.trim();
  if (!text || current) return;
  $('prompt').value = '';
  showError(null);
  conversation.push({ role: 'user', content: text });
  bubble('user', text);
  const reply = bubble('assistant', '');
  reply.classList.add('streaming');
  setBusy(true);
  const messages = [{ role: 'system', content: $('system').value }, ...conversation];
  let content = '';
  try {
    current = await engine.chat.completions.create({
      messages,
      stream: true,
      temperature: Number($('temperature').value),
      max_tokens: Number($('max-tokens').value),
    });
    for await (const chunk of current) {
      content += chunk.choices[0].delta?.content ?? '';
      reply.textContent = content;
      if (chunk.usage) {
        const t = chunk.sovereign?.timings ?? {};
        const meta = document.createElement('span');
        meta.className = 'meta';
        const rate = t.decode_tokens_per_second ? `${t.decode_tokens_per_second.toFixed(1)} tokens/s` : '';
        meta.textContent = [
          `${chunk.usage.completion_tokens} tokens`,
          rate,
          t.time_to_first_token_ms != null ? `first token after ${(t.time_to_first_token_ms / 1000).toFixed(2)} s` : '',
          chunk.sovereign?.cancelled ? 'stopped' : '',
        ].filter(Boolean).join(' · ');
        reply.append(meta);
        $('stats').textContent = `${chunk.usage.prompt_tokens + chunk.usage.completion_tokens} tokens in context` +
          (rate ? ` · ${rate}` : '');
      }
      reply.scrollIntoView({ block: 'end' });
    }
    conversation.push({ role: 'assistant', content });
  } catch (error) {
    showError(error);
    // A refused turn is taken back, so the conversation stays one the model can continue.
    conversation.pop();
  } finally {
    reply.classList.remove('streaming');
    current = null;
    setBusy(false);
  }
}

async function defaultModel() {
  const param = new URLSearchParams(location.search).get('model');
  if (param) return param;
  try {
    const response = await fetch('config.json');
    if (response.ok) return (await response.json()).model_url ?? '';
  } catch {
    // A static host without config.json: the user picks a model.
  }
  return '';
}

async function main() {
  $('model-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if ($('model-url').value.trim()) load($('model-url').value.trim());
  });
  $('model-file').addEventListener('change', () => {
    const file = $('model-file').files[0];
    if (file) load(file);
  });
  $('chat-form').addEventListener('submit', (e) => { e.preventDefault(); send(); });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); }
    if (e.key === 'Escape') current?.cancel();
  });
  $('stop').addEventListener('click', () => current?.cancel());
  $('clear').addEventListener('click', () => {
    current?.cancel();
    conversation.length = 0;
    $('messages').replaceChildren();
  });

  const noWebGPU = (detail) => {
    $('no-webgpu').hidden = false;
    if (detail) $('no-webgpu-detail').textContent = detail;
    $('adapter').textContent = 'no WebGPU';
    $('model-bar').hidden = true;
  };
  if (!hasWebGPU()) {
    noWebGPU();
    return;
  }
  try {
    engine = await Sovereign.create();
  } catch (error) {
    if (error.code === 'webgpu_unavailable') {
      noWebGPU(error.message);
    } else {
      $('adapter').textContent = 'no adapter';
      showError(error);
    }
    return;
  }
  window.sovereign = engine;
  const a = engine.adapter;
  const name = a.name || [a.vendor, a.architecture].filter(Boolean).join(' ') || 'WebGPU adapter';
  $('adapter').textContent = `${name}${a.cpu ? ' (CPU)' : ''}${a.shader_f16 ? ' · f16' : ''}${a.subgroups ? ' · subgroups' : ''}`;
  const url = await defaultModel();
  $('model-url').value = url;
  if (url) await load(url);
  setBusy(false);
}

// Tests and embedding pages wait on this.
window.sovereignReady = main();
