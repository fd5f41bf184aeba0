/* modhost API client: one small helper shared by the dashboard, the explorer
 * and module explorer UIs. Plain ES2020, no build step. Defines one global,
 * `window.modhost`; loading this file twice keeps the first copy.
 *
 * Wire format: CodeProject.AI Server 2.9 (docs/protocol.md §2), plus
 * modhost's job streams (§4.4) where the server has them.
 *
 *   modhost.base
 *     Server origin the requests go to: the origin this file was loaded from
 *     (so a module's explore.html opened from disk talks to the server that
 *     served api.js); '' means this page's origin. May be reassigned.
 *
 *   modhost.get(path, {timeoutMs = 15000}) -> Promise<object>
 *     GET /v1/{path} ('v1/' and a leading '/' are optional). Resolves to the
 *     parsed JSON. Rejects with a modhost.ApiError when the server cannot be
 *     reached, times out, answers with something that is not JSON, answers
 *     with an HTTP error status, or says `success: false`.
 *
 *   modhost.postForm(route, fields, {timeoutMs = 65000}) -> Promise<object>
 *     POST /v1/{route} as multipart/form-data. `fields` maps names to a value
 *     (string/number/boolean), a File or Blob, or an array (the field is
 *     repeated); null and undefined are left out. Resolves to the module's
 *     JSON reply *including failures*: `{success: false, error: "..."}` comes
 *     back both as HTTP 200 (module or queue failure) and as HTTP 4xx (bad
 *     input, unknown route), and callers show `error` either way. Rejects
 *     with an ApiError only when no JSON reply arrives (network, timeout).
 *
 *   modhost.runLongCommand(route, moduleId, fields,
 *                          {onUpdate, onDone, intervalMs = 250, stream = true}) -> handle
 *     Starts a long-running command and follows it: the first POST answers
 *     `{commandId, commandStatus: "running"}`. Then, where the browser has
 *     EventSource and the server streams jobs (modhost, docs/protocol.md
 *     §4.4), it reads the job's event stream: `delta` events grow `reply`,
 *     `status` events change other fields, `done` is the final reply, an
 *     `error` event a failure. Otherwise (CodeProject.AI Server, or the
 *     stream cannot be opened) it POSTs {moduleId}/get_command_status with
 *     `commandId` every intervalMs (never two at once) until the status is
 *     terminal: anything but "running" or "queued" (completed, cancelled, failed...) or
 *     `success: false`. onUpdate(reply) gets each running state (partial
 *     fields, e.g. LlamaChat's `reply` so far); onDone(reply) is called
 *     exactly once with the final reply. A plain (not long-running) reply is
 *     final at once. Connection failures end it with a made-up
 *     `{success: false, commandStatus: "failed", error}`.
 *     handle: { done: Promise<final reply>, commandId (null until known),
 *               finished (bool), transport ('stream' | 'poll' | null),
 *               cancel() -> Promise<cancel reply | null> }.
 *     cancel() POSTs {moduleId}/cancel_command and resolves to its reply; if
 *     the command id is not known yet it resolves to null and the cancel is
 *     sent as soon as the id arrives. Polling goes on to collect the final
 *     reply, which carries the statistics (LlamaChat: completed with
 *     stop_reason "cancelled").
 *
 *   modhost.setting(moduleId, name, value) -> Promise<object>
 *     POST /v1/server/settings/{moduleId}, urlencoded: AutoStart=true starts
 *     a module, AutoStart=false stops it, Restart restarts it. Rejects like get().
 *
 *   modhost.runSkill(name, inputJson) -> Promise<{output, jobId}>
 *     POST /v1/skills/{namespace}/{name}/run with the JSON text: the skill's
 *     output; rejects with the server's error (400, 404, 500, 503).
 *
 *   modhost.cancelJob(jobId) -> Promise<object>
 *     POST /v1/jobs/{jobId}/cancel: stops a running job. Rejects like get().
 *
 *   modhost.apiKey
 *     The API key sent with every request (X-API-Key), when the server needs
 *     one. Kept in the browser's session storage; the first request the
 *     server refuses with 401 asks for it once (window.prompt) and is retried.
 *
 *   DOM helpers (module and server strings are only ever set as text):
 *     text(el, value)       sets textContent (null/undefined -> ''); el is an
 *                           element or an id; returns the element.
 *     el(tag, attrs, ...children)  creates an element; attrs: `text` sets
 *                           textContent, `class`, other keys are attributes,
 *                           function values (onclick...) become listeners;
 *                           children: nodes or strings (as text), nulls skipped.
 *     uiKey(moduleId)       what `_MID_` becomes in a module's explorer UI:
 *                           the id without non-alphanumerics, plus '_'.
 *   Formatting: ago(date), bytes(n), duration(secs).
 */
(() => {
  'use strict';
  if (window.modhost) return;

  /** Any failure to get a usable reply; `status` is the HTTP status (0 = none),
   *  `body` the parsed JSON reply when there was one. */
  class ApiError extends Error {
    constructor(message, status = 0, body = null) {
      super(message);
      this.name = 'ApiError';
      this.status = status;
      this.body = body;
    }
  }

  // The origin api.js came from: module pages opened from disk load it from
  // the server and must send their requests there too.
  const scriptOrigin = (() => {
    try {
      const src = document.currentScript && document.currentScript.src;
      return src ? new URL(src).origin : '';
    } catch {
      return '';
    }
  })();

  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

  // The API key, kept for this browser tab only.
  const KEY_STORE = 'modhost.apiKey';
  const storedKey = () => {
    try { return sessionStorage.getItem(KEY_STORE) || ''; } catch { return ''; }
  };
  let askedForKey = false;

  // Asks for the key after a 401, once per page; true when one was given.
  function askForKey(message) {
    if (askedForKey || typeof window.prompt !== 'function') return false;
    askedForKey = true;
    const key = (window.prompt(`${message}\n\nAPI key for this modhost server:`) || '').trim();
    if (!key) return false;
    modhost.apiKey = key;
    try { sessionStorage.setItem(KEY_STORE, key); } catch { /* private mode */ }
    return true;
  }

  // Fetches and parses JSON; resolves even for HTTP errors so that callers
  // can show the server's `error` text. A 401 asks for the API key once and
  // retries.
  async function request(method, path, body, timeoutMs, retried = false) {
    const url = `${modhost.base}/v1/${String(path).replace(/^\/+/, '').replace(/^v1\//, '')}`;
    const headers = modhost.apiKey ? { 'X-API-Key': modhost.apiKey } : {};
    let res;
    try {
      res = await fetch(url, { method, body, headers, signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      const why = err && err.name === 'TimeoutError' ? `no reply in ${timeoutMs / 1000} s` : 'server unreachable';
      throw new ApiError(`${method} ${url}: ${why}`);
    }
    if (res.status === 401 && !retried) {
      let reason = 'This server needs an API key.';
      try { reason = (await res.clone().json()).error || reason; } catch { /* not JSON */ }
      if (askForKey(reason)) return request(method, path, body, timeoutMs, true);
    }
    let json;
    try {
      json = await res.json();
    } catch {
      throw new ApiError(`${method} ${url}: HTTP ${res.status}, reply is not JSON`, res.status);
    }
    if (json === null || typeof json !== 'object') {
      throw new ApiError(`${method} ${url}: reply is not a JSON object`, res.status);
    }
    return { res, json };
  }

  // For server endpoints, where a failure is exceptional: reject.
  function strict({ res, json }) {
    if (!res.ok || json.success === false) {
      throw new ApiError(json.error || `HTTP ${res.status}`, res.status, json);
    }
    return json;
  }

  function formData(fields) {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields || {})) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v === null || v === undefined) continue;
        if (v instanceof Blob) form.append(name, v, v.name || name);
        else form.append(name, String(v));
      }
    }
    return form;
  }

  async function postForm(route, fields, { timeoutMs = 65000 } = {}) {
    return (await request('POST', route, formData(fields), timeoutMs)).json;
  }

  // Waiting for a slot in the module (`queued`) is not an end either.
  const isRunning = reply => reply.success !== false
    && (reply.commandStatus === 'running' || reply.commandStatus === 'queued');

  // Follows job `commandId` through its event stream, starting from the
  // `first` (running) reply. Resolves to the final reply, or null when the
  // stream cannot be had (no EventSource, or a server that does not stream
  // jobs): the caller then polls.
  function streamJob(commandId, first, onUpdate) {
    if (typeof window.EventSource !== 'function') return Promise.resolve(null);
    return new Promise(resolve => {
      const key = modhost.apiKey ? `?api_key=${encodeURIComponent(modhost.apiKey)}` : '';
      const es = new EventSource(`${modhost.base}/v1/jobs/${encodeURIComponent(commandId)}/events${key}`);
      const state = { ...first, reply: typeof first.reply === 'string' ? first.reply : '' };
      let heard = false;
      const end = value => { es.close(); resolve(value); };
      const parse = e => { heard = true; return JSON.parse(e.data); };
      es.addEventListener('status', e => {
        Object.assign(state, parse(e));
        onUpdate({ ...state, commandStatus: state.commandStatus || 'running' });
      });
      es.addEventListener('delta', e => {
        state.reply += parse(e).text;
        onUpdate({ ...state, commandStatus: 'running' });
      });
      es.addEventListener('done', e => end(parse(e)));
      es.addEventListener('error', e => {
        if (e.data) {
          // The job failed: the server's error event.
          const failure = parse(e);
          end({ ...state, success: false, commandId, commandStatus: 'failed',
                error: failure.message, errorCode: failure.code });
        } else if (!heard || es.readyState === EventSource.CLOSED) {
          // Never connected, or given up: poll instead. (A drop mid-stream
          // reconnects by itself, resuming after the last event id.)
          end(null);
        }
      });
    });
  }

  function runLongCommand(route, moduleId, fields, { onUpdate, onDone, intervalMs = 250, stream = true } = {}) {
    let commandId = null;
    let cancelWanted = false;
    let cancelSent = null;
    let finished = false;
    let transport = null;

    const sendCancel = () => {
      cancelSent = cancelSent || postForm(`${moduleId}/cancel_command`, { commandId })
        .catch(err => ({ success: false, error: err.message }));
      return cancelSent;
    };
    const call = (fn, reply) => {
      try {
        if (fn) fn(reply);
      } catch (err) {
        console.error('modhost.runLongCommand callback failed', err);
      }
    };
    const lost = err => ({ success: false, commandId, commandStatus: 'failed', error: err.message });

    const follow = async () => {
      let reply;
      try {
        reply = await postForm(route, fields);
      } catch (err) {
        return lost(err);
      }
      if (!isRunning(reply) || !reply.commandId) return reply;
      commandId = reply.commandId;
      if (cancelWanted) sendCancel();
      call(onUpdate, reply);
      if (stream) {
        transport = 'stream';
        const last = await streamJob(commandId, reply, update => call(onUpdate, update));
        if (last) return last;
      }
      transport = 'poll';
      // A few failed polls in a row (server restarting, network blip) are
      // tolerated before giving up.
      for (let failures = 0; ;) {
        await sleep(intervalMs);
        try {
          reply = await postForm(`${moduleId}/get_command_status`, { commandId }, { timeoutMs: 15000 });
          failures = 0;
        } catch (err) {
          if (++failures >= 4) return lost(err);
          continue;
        }
        if (!isRunning(reply)) return reply;
        call(onUpdate, reply);
      }
    };

    const done = follow().then(reply => {
      finished = true;
      call(onDone, reply);
      return reply;
    });

    return {
      done,
      get commandId() { return commandId; },
      get finished() { return finished; },
      get transport() { return transport; },
      cancel() {
        if (finished) return Promise.resolve(null);
        cancelWanted = true;
        return commandId ? sendCancel() : Promise.resolve(null);
      },
    };
  }

  async function setting(moduleId, name, value) {
    const body = new URLSearchParams({ name });
    if (value !== undefined && value !== null) body.set('value', String(value));
    return strict(await request('POST', `server/settings/${encodeURIComponent(moduleId)}`, body, 15000));
  }

  async function cancelJob(jobId) {
    return strict(await request('POST', `jobs/${encodeURIComponent(jobId)}/cancel`, undefined, 15000));
  }

  async function runSkill(name, inputJson) {
    const { res, json } = await request('POST', `skills/${name}/run`, inputJson, 15 * 60 * 1000);
    if (!res.ok) throw new ApiError(json.error || `HTTP ${res.status}`, res.status, json);
    return { output: json, jobId: res.headers.get('X-Job-Id') };
  }

  async function get(path, { timeoutMs = 15000 } = {}) {
    return strict(await request('GET', path, undefined, timeoutMs));
  }

  // ---- DOM helpers -------------------------------------------------------

  function text(el, value) {
    const node = typeof el === 'string' ? document.getElementById(el) : el;
    if (node) node.textContent = value === null || value === undefined ? '' : String(value);
    return node;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (typeof value === 'function') node.addEventListener(key.replace(/^on/, ''), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const uiKey = moduleId => `${String(moduleId).replace(/[^A-Za-z0-9]/g, '')}_`;

  // ---- formatting --------------------------------------------------------

  function duration(secs) {
    secs = Math.max(0, Math.floor(Number(secs) || 0));
    if (secs < 60) return `${secs} s`;
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    return `${m} min ${secs % 60} s`;
  }

  function ago(date) {
    const t = date instanceof Date ? date.getTime() : Date.parse(date);
    if (!Number.isFinite(t)) return 'never';
    const secs = Math.max(0, (Date.now() - t) / 1000);
    return `${duration(secs)} ago`;
  }

  function bytes(n) {
    n = Number(n);
    if (!Number.isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  const modhost = {
    base: scriptOrigin,
    apiKey: storedKey(),
    ApiError, get, postForm, runLongCommand, setting, cancelJob, runSkill,
    text, el, uiKey, ago, bytes, duration, sleep,
  };
  window.modhost = modhost;
})();
