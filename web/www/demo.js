// The demo page: load a model, chat with it, see what the engine does. Everything runs through
// the public JS API (sovereign.js), as an embedding page would use it.
import { Sovereign, hasWebGPU } from './sovereign.js';

const $ = (id) => document.getElementById(id);
const conversation = [];
let engine = null;
let current = null;
let loading = false;
// Counts conversations: a reply still streaming when "New conversation" is clicked belongs to
// the old one and is not added to the new one.
let generation = 0;
// The first message the model still gets: older turns no longer fit the context.
let keptFrom = 0;

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

/** Enables what can be used now: nothing new while a model loads, Stop only during a reply. */
function updateControls() {
  const ready = Boolean(engine?.model) && !loading;
  $('send').disabled = !ready || Boolean(current);
  $('prompt').disabled = !ready;
  $('stop').hidden = !current;
  if (!current) {
    $('stop').disabled = false;
    $('stop').textContent = 'Stop';
  }
  $('load').disabled = loading || !engine;
  $('model-file').disabled = loading || !engine;
  document.querySelector('.file-button').classList.toggle('disabled', loading || !engine);
}

function stop() {
  if (!current) return;
  current.cancel();
  // A long prompt finishes its current step first: say that the stop was heard.
  $('stop').disabled = true;
  $('stop').textContent = 'Stopping…';
}

async function load(source) {
  if (loading) return;
  showError(null);
  loading = true;
  updateControls();
  try {
    const model = await engine.load(source, { onProgress: setProgress });
    $('model-info').textContent = `${model.name}: ${model.n_ctx} tokens of context, ` +
      `${megabytes(model.weight_bytes)} of weights on the GPU` + (model.cached ? ', loaded from browser storage' : '');
    $('progress').hidden = true;
    newConversation();
  } catch (error) {
    showError(error);
    $('progress').hidden = true;
  }
  loading = false;
  updateControls();
  if (engine.model) $('prompt').focus();
}

function newConversation() {
  generation += 1;
  current?.cancel();
  conversation.length = 0;
  keptFrom = 0;
  $('messages').replaceChildren();
  $('stats').textContent = '';
  showError(null);
}

/** Whether the page shows its end, so new text should keep it in view. */
function atBottom() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
}

/** Where the turn after the one starting at `from` starts (the next user message), or -1. */
function nextTurn(from) {
  for (let i = from + 1; i < conversation.length; i += 1) {
    if (conversation[i].role === 'user') return i;
  }
  return -1;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
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
  if (!text || current || loading || !engine?.model) return;
  showError(null);
  const temperature = Number.parseFloat($('temperature').value);
  const maxTokens = Number($('max-tokens').value);
  if (!(temperature >= 0 && temperature <= 2)) {
    showError({ message: 'Temperature must be a number from 0 to 2 (Settings).' });
    return;
  }
  if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) {
    showError({ message: 'Max tokens must be a whole number of at least 1 (Settings).' });
    return;
  }
  const turn = generation;
  const mine = () => turn === generation;
  // Busy from here: the request takes a round trip to the worker (several, when old turns
  // must go) before its stream exists, and Stop or "New conversation" may come meanwhile.
  let cancelled = false;
  const pending = { cancel() { cancelled = true; } };
  current = pending;
  updateControls();
  conversation.push({ role: 'user', content: text });
  const question = bubble('user', text);
  const reply = bubble('assistant', '');
  reply.classList.add('streaming');
  $('prompt').value = '';
  let content = '';
  let stream = null;
  try {
    // A conversation longer than the context goes to the model as its newest turns: the
    // oldest are left out until the rest fits, and the reply says so.
    let from = keptFrom;
    for (;;) {
      try {
        stream = await engine.chat.completions.create({
          messages: [{ role: 'system', content: $('system').value }, ...conversation.slice(from)],
          stream: true,
          temperature,
          max_tokens: maxTokens,
        });
        break;
      } catch (error) {
        const next = nextTurn(from);
        if (error.code !== 'context_length_exceeded' || next < 0 || !mine()) throw error;
        from = next;
      }
    }
    if (current === pending) current = stream;
    if (cancelled || !mine()) stream.cancel();
    if (mine()) keptFrom = from;
    let note = null;
    if (from > 0) {
      note = document.createElement('span');
      note.className = 'note';
      note.textContent = `The ${plural(from, 'oldest message')} no longer fit the context and ${from === 1 ? 'was' : 'were'} left out.`;
    }
    for await (const chunk of stream) {
      const follow = atBottom();
      content += chunk.choices[0].delta?.content ?? '';
      reply.textContent = content;
      if (note) reply.prepend(note);
      if (chunk.usage) {
        // Cut short before Max tokens: the context filled up. The next message makes room for
        // its reply by leaving out the oldest turn.
        const full = chunk.choices[0]?.finish_reason === 'length' && chunk.usage.completion_tokens < maxTokens;
        if (full && mine()) {
          const next = nextTurn(keptFrom);
          if (next >= 0) keptFrom = next;
        }
        const t = chunk.sovereign?.timings ?? {};
        const meta = document.createElement('span');
        meta.className = 'meta';
        const rate = t.decode_tokens_per_second ? `${t.decode_tokens_per_second.toFixed(1)} tokens/s` : '';
        meta.textContent = [
          plural(chunk.usage.completion_tokens, 'token'),
          rate,
          t.time_to_first_token_ms != null ? `first token after ${(t.time_to_first_token_ms / 1000).toFixed(2)} s` : '',
          chunk.sovereign?.cancelled ? 'stopped' : '',
          full ? 'the context is full: the next message leaves out the oldest turn'
            : chunk.choices[0]?.finish_reason === 'length' ? 'cut at Max tokens' : '',
        ].filter(Boolean).join(' · ');
        reply.append(meta);
        if (mine()) {
          $('stats').textContent = `${chunk.usage.prompt_tokens + chunk.usage.completion_tokens} tokens in context` +
            (rate ? ` · ${rate}` : '');
        }
      }
      // Only a reader at the end is taken along; one scrolled up to read stays there.
      if (follow) reply.scrollIntoView({ block: 'end' });
    }
    if (mine()) conversation.push({ role: 'assistant', content });
  } catch (error) {
    if (mine()) {
      // A refused turn is taken back, so the conversation stays one the model can continue,
      // and a message that never reached the model goes back into the box.
      conversation.pop();
      if (!content) {
        question.remove();
        reply.remove();
        if (!$('prompt').value) $('prompt').value = text;
      }
      showError(error);
    }
  } finally {
    reply.classList.remove('streaming');
    if (current === pending || current === stream) current = null;
    updateControls();
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
    if (e.key === 'Escape') stop();
  });
  $('stop').addEventListener('click', stop);
  $('clear').addEventListener('click', newConversation);
  updateControls();

  const noWebGPU = (detail) => {
    $('no-webgpu').hidden = false;
    if (detail) {
      // WebGPU is there, but the browser gives the page no GPU adapter.
      $('no-webgpu-title').textContent = 'WebGPU has no GPU adapter here';
      $('no-webgpu-help').textContent = 'This browser has WebGPU but gave the page no GPU to run on: '
        + 'hardware acceleration may be off in its settings, or the GPU blocked. Turn it on, or try another browser, then reload.';
      $('no-webgpu-detail').textContent = '';
      $('adapter').textContent = 'no GPU adapter';
    } else {
      $('adapter').textContent = 'no WebGPU';
    }
    $('model-bar').hidden = true;
    document.querySelector('main').hidden = true;
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
  updateControls();
  const url = await defaultModel();
  $('model-url').value = url;
  if (url) await load(url);
  updateControls();
}

// Tests and embedding pages wait on this.
window.sovereignReady = main();
