// Types of the Sovereign browser API (sovereign.js).

export interface AdapterInfo {
  name: string;
  vendor: string;
  architecture: string;
  description: string;
  /** A software adapter: the kernels take their CPU shapes. */
  cpu: boolean;
  backend: string;
  driver: string;
  shader_f16: boolean;
  subgroups: boolean;
  max_storage_buffer_binding_size: number;
  max_buffer_size: number;
}

export interface ModelInfo {
  name: string;
  arch: string;
  n_ctx: number;
  n_vocab: number;
  sequences: number;
  weight_bytes: number;
  kv_bytes: number;
  /** How the KV cache holds K and V: "f32", "f16" or "q8_0". */
  kv_type: string;
  adapter: string;
  /** Read from browser storage instead of downloaded. */
  cached: boolean;
  /** Size of the GGUF file. */
  bytes: number;
}

export interface LoadProgress {
  phase: 'download' | 'cache' | 'read' | 'upload';
  loaded: number;
  total: number;
}

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Positions per sequence (default 2048). */
  contextSize?: number;
  /** Requests served at once (default 2). */
  sequences?: number;
  /** Keep a downloaded model in browser storage and read it from there next time (default true). */
  cache?: boolean;
}

export interface ToolCall {
  id: string;
  type: 'function';
  /** `arguments` is JSON text. */
  function: { name: string; arguments: string };
}

export type ChatMessage =
  | { role: 'system' | 'developer' | 'user'; content: string }
  | { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }
  /** The result of the call `tool_call_id`. */
  | { role: 'tool'; tool_call_id: string; content: string };

export interface Tool {
  type: 'function';
  function: { name: string; description?: string; parameters?: object; strict?: boolean };
}

/** Sampling and limits, as OpenAI's API names them, plus llama.cpp's extras. */
export interface SamplingFields {
  model?: string;
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  repeat_penalty?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  seed?: number;
  stop?: string | string[];
  logprobs?: boolean;
  stream?: boolean;
  /** Token id (as a string) to a bias in [-100, 100] added to its logit. */
  logit_bias?: Record<string, number>;
  /** Structured output: any JSON object, or JSON valid against a schema. */
  response_format?:
    | { type: 'text' }
    | { type: 'json_object'; schema?: object }
    | { type: 'json_schema'; json_schema: { name?: string; description?: string; schema?: object; strict?: boolean } };
}

export interface ChatRequest extends SamplingFields {
  messages: ChatMessage[];
  top_logprobs?: number;
  /** Functions the model may call; its reply is then calls or (with 'auto') words. */
  tools?: Tool[];
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };
  /** Several calls in one reply (default false). */
  parallel_tool_calls?: boolean;
}

export interface CompletionRequest extends SamplingFields {
  prompt: string | number[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export interface Timings {
  queued_ms: number;
  time_to_first_token_ms: number | null;
  total_ms: number;
  prompt_tokens_per_second: number | null;
  decode_tokens_per_second: number | null;
}

/** Beyond OpenAI's fields: the token ids of a delta; timings on the last chunk. */
export interface SovereignFields {
  token_ids?: number[];
  timings?: Timings;
  cancelled?: boolean;
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | null;

export interface ChatChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string; tool_calls?: (ToolCall & { index: number })[] };
    logprobs: unknown;
    finish_reason: FinishReason;
  }[];
  usage?: Usage;
  sovereign?: SovereignFields;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: number; text: string; logprobs: unknown; finish_reason: FinishReason }[];
  usage?: Usage;
  sovereign?: SovereignFields;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] };
    logprobs: null;
    finish_reason: FinishReason;
  }[];
  usage: Usage;
  sovereign: SovereignFields;
}

export interface TextCompletion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: number; text: string; logprobs: null; finish_reason: FinishReason }[];
  usage: Usage;
  sovereign: SovereignFields;
}

export interface EmbeddingRequest {
  /** A text, texts, token ids, or arrays of token ids: a vector for each input. */
  input: string | string[] | number[] | number[][];
  model?: string;
  /** `float` (the default here) or `base64` (little-endian f32 bytes). */
  encoding_format?: 'float' | 'base64';
  /** Only the model's own width is accepted. */
  dimensions?: number;
  /** llama.cpp's: -1 none, 0 int16 range, 1 taxicab, 2 Euclidean (the default), p > 2 p-norm. */
  embd_normalize?: number;
}

export interface EmbeddingResponse {
  object: 'list';
  data: { object: 'embedding'; index: number; embedding: number[] | string }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

export declare class Stream<Chunk> implements AsyncIterable<Chunk> {
  /** Resolves with the last chunk (finish_reason, usage, timings). */
  readonly done: Promise<Chunk>;
  /** Stops generation at once; the stream still ends with its last chunk. */
  cancel(): void;
  [Symbol.asyncIterator](): AsyncIterator<Chunk>;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface EngineStats {
  model: string;
  adapter: string;
  backend: string;
  n_ctx: number;
  requests_submitted: number;
  requests_finished: number;
  requests_cancelled: number;
  running_sequences: number;
  queue_depth: number;
  prompt_tokens: number;
  cached_prompt_tokens: number;
  generated_tokens: number;
  decode_tokens_per_second: number;
  kv_pages_total: number;
  kv_pages_used: number;
  kv_pages_cached: number;
}

export interface KernelCheck {
  name: string;
  max_error: number;
  tolerance: number;
  passed: boolean;
}

export interface BenchResult {
  streams: number;
  n_prompt: number;
  n_gen: number;
  tokens_per_second: number;
  window_tokens: number;
  window_seconds: number;
}

export declare class SovereignError extends Error {
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;
  readonly status: number;
}

export declare function hasWebGPU(): boolean;

export declare class Sovereign {
  /** Starts the worker and opens WebGPU; rejects with code `webgpu_unavailable` without it. */
  static create(options?: { workerUrl?: string | URL }): Promise<Sovereign>;
  readonly adapter: AdapterInfo;
  readonly model: ModelInfo | null;
  load(source: string | Blob, options?: LoadOptions): Promise<ModelInfo>;
  readonly chat: {
    completions: {
      create(body: ChatRequest & { stream: true }, options?: RequestOptions): Promise<Stream<ChatChunk>>;
      create(body: ChatRequest & { stream?: false }, options?: RequestOptions): Promise<ChatCompletion>;
    };
  };
  readonly completions: {
    create(body: CompletionRequest & { stream: true }, options?: RequestOptions): Promise<Stream<CompletionChunk>>;
    create(body: CompletionRequest & { stream?: false }, options?: RequestOptions): Promise<TextCompletion>;
  };
  /** Embeddings: the final norm's output pooled as the model's file says (mean by default). */
  readonly embeddings: {
    create(body: EmbeddingRequest): Promise<EmbeddingResponse>;
  };
  stats(): Promise<EngineStats | null>;
  bench(options?: { streams?: number; nPrompt?: number; nGen?: number }): Promise<BenchResult>;
  kernelChecks(): Promise<KernelCheck[]>;
  cachedModels(): Promise<string[]>;
  evict(url: string): Promise<boolean>;
  terminate(): void;
}
