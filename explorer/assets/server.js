/* modhost: the page helpers that CodeProject.AI Server serves as
 * /assets/server.js. A module's explore.html opened on its own loads
 * http://localhost:32168/assets/server.js and then /assets/explorer.js; the
 * explorer page loads them too. Plain ES2020, no build step, classic script.
 *
 * Written from the behaviour module UIs expect (docs/protocol.md §2.6), not
 * from CodeProject's code. Everything below is a page global (a property of
 * window). Loading this file twice keeps the first copy, and a name the page
 * already defined is left alone. Nothing runs by itself: no timers, no
 * requests; a page that wants the server's status calls ping() and
 * getVersion() itself.
 *
 * Constants (seconds): serverWarmupSec = 5, pingFrequencySec = 5,
 *   updateStatusFreqSec = 5, customModelUpdateFreqSec = 60,
 *   updateModuleUiFreqSec = 10, serviceTimeoutSec = 30, lostConnectionSec = 30.
 *
 *   apiServiceUrl: string
 *     The server's origin, e.g. "http://localhost:32168": the origin this
 *     file was loaded from when that is http(s) (so a module page opened from
 *     disk talks to the server that served it); else this page's origin when
 *     it is http(s); else http://localhost:32168. May be reassigned. Requests
 *     go to the value of an #serviceUrl input instead when the page has one
 *     and it is not empty.
 *
 *   showError(status, error), showWarning(status, msg), showInfo(status, msg)
 *     A truthy `status` goes to #serverStatus (setServerStatus, variants
 *     "error", "warn", "info"); a truthy message goes to #status
 *     (showLogOutput) and to the console. modhost: an error or a warning is
 *     never only in the console; a page without #status gets one, inside
 *     #shared-output when there is one, else at the end of <body>.
 *
 *   showLogOutput(text, variant = "info")
 *     Shows `text` (as text, never markup) in #status as
 *     <span class="text-{variant}">; empty text clears it. Also logs it to
 *     the console (console.error for "error", console.warn for "warn").
 *     Unhides #status and its [data-shared-output] container.
 *
 *   setServerStatus(text, variant, tooltip)
 *     #serverStatus shows a <span class="server-status bg-{variant}"> with
 *     the text and tooltip; empty text clears it.
 *   setServerHostname(name)   #hostname shows name.
 *   showCommunication(active) toggles the class "active" on #communication.
 *
 *   makeGET(path) -> Promise<object>
 *   makePOST(path, name?, value?) -> Promise<object>
 *     GET or POST {base}/v1/{path}; makePOST sends the multipart form fields
 *     `name` and `value` when given. base: #serviceUrl's value or
 *     apiServiceUrl. Times out after serviceTimeoutSec. Sends X-API-Key when
 *     modhost.apiKey (api.js) is set. Resolves to the reply's JSON object
 *     (an HTTP error's JSON body has success: false), or to
 *     {success: false, error} when no JSON object came back. Never rejects.
 *
 *   ping() -> Promise<object>
 *     GET server/status/ping: "Online" in #serverStatus and the hostname in
 *     #hostname, or showError("Offline", <why>).
 *   getVersion() -> Promise<object>
 *     GET server/status/version: sets the global _version and writes the
 *     reply's `message` to #server-version. (modhost's explorer page writes
 *     #server-version itself and does not call this.)
 *   copyToClipboard(elementId) -> Promise<boolean>
 *     Copies the element's value (inputs) or text; true when it worked.
 *
 * Differences from CodeProject: makeGET/makePOST have no back-off after
 * errors (they never resolve to undefined), nothing is written as HTML, and
 * the colour-mode toggle is absent (modhost has one light theme).
 */
(() => {
  'use strict';
  if (window.apiServiceUrl !== undefined) return;

  const $ = id => document.getElementById(id);

  // Defines a page global unless the page already has one of that name.
  const define = (name, value) => {
    if (!(name in window)) window[name] = value;
  };

  const isHttp = url => /^https?:$/.test(url.protocol);

  const scriptOrigin = (() => {
    try {
      const src = document.currentScript && document.currentScript.src;
      const url = src ? new URL(src) : null;
      return url && isHttp(url) ? url.origin : '';
    } catch {
      return '';
    }
  })();

  define('serverWarmupSec', 5);
  define('pingFrequencySec', 5);
  define('updateStatusFreqSec', 5);
  define('customModelUpdateFreqSec', 60);
  define('updateModuleUiFreqSec', 10);
  define('serviceTimeoutSec', 30);
  define('lostConnectionSec', 30);
  window.apiServiceUrl = scriptOrigin || (isHttp(location) ? location.origin : 'http://localhost:32168');

  // ---- status output -----------------------------------------------------

  // Shows `node` and the shared output area holding it, if it is hidden.
  function reveal(node) {
    if (!node) return;
    node.hidden = false;
    const area = node.closest && node.closest('[data-shared-output]');
    if (area) area.hidden = false;
  }

  // #status; when `create`, a new one where the user will see it.
  function statusElement(create) {
    let node = $('status');
    if (node || !create || !document.body) return node;
    node = document.createElement('div');
    node.id = 'status';
    node.setAttribute('role', 'status');
    const area = $('shared-output') || document.querySelector('[data-shared-output]');
    (area || document.body).append(node);
    return node;
  }

  function logOutput(text, variant = 'info') {
    const message = text === null || text === undefined ? '' : String(text);
    const serious = variant === 'error' || variant === 'warn' || variant === 'warning';
    if (message) {
      if (variant === 'error') console.error(`ERROR: ${message}`);
      else if (serious) console.warn(`WARN: ${message}`);
      else console.log(message);
    }
    const node = statusElement(Boolean(message) && serious);
    if (!node) return;
    node.replaceChildren();
    if (!message) {
      delete node.dataset.variant;
      return;
    }
    const span = document.createElement('span');
    span.className = `text-${variant || 'info'}`;
    span.textContent = message;
    node.append(span);
    node.dataset.variant = variant || 'info';
    reveal(node);
  }

  function setServerStatus(text, variant, tooltip) {
    const node = $('serverStatus');
    if (!node) return;
    node.replaceChildren();
    if (!text) return;
    const span = document.createElement('span');
    span.className = `server-status bg-${variant || 'info'}`;
    span.textContent = String(text);
    if (tooltip) span.title = String(tooltip);
    node.append(span);
  }

  const notify = variant => (status, message) => {
    if (status) setServerStatus(status, variant);
    if (message) logOutput(message, variant);
  };

  function setServerHostname(name) {
    const node = $('hostname');
    if (node) node.textContent = name === null || name === undefined ? '' : String(name);
  }

  function showCommunication(active) {
    const node = $('communication');
    if (node) node.classList.toggle('active', Boolean(active));
  }

  // ---- requests ----------------------------------------------------------

  function serviceBase() {
    const input = $('serviceUrl');
    const typed = input && typeof input.value === 'string' ? input.value.trim() : '';
    return (typed || window.apiServiceUrl || '').replace(/\/+$/, '');
  }

  async function call(method, path, body) {
    const url = `${serviceBase()}/v1/${String(path).replace(/^\/+/, '')}`;
    const secs = Number(window.serviceTimeoutSec) > 0 ? Number(window.serviceTimeoutSec) : 30;
    const headers = window.modhost && window.modhost.apiKey ? { 'X-API-Key': window.modhost.apiKey } : {};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), secs * 1000);
    let res;
    try {
      res = await fetch(url, { method, body, headers, signal: abort.signal });
    } catch (err) {
      const why = abort.signal.aborted ? `no reply within ${secs} s` : `server unreachable (${err && err.message})`;
      return { success: false, error: `${method} ${url}: ${why}` };
    } finally {
      clearTimeout(timer);
    }
    let json;
    try {
      json = await res.json();
    } catch {
      return { success: false, error: `${method} ${url}: HTTP ${res.status}, reply is not JSON` };
    }
    if (json === null || typeof json !== 'object') {
      return { success: false, error: `${method} ${url}: reply is not a JSON object` };
    }
    if (!res.ok && json.success !== false) {
      return { ...json, success: false, error: json.error || `${method} ${url}: HTTP ${res.status}` };
    }
    return json;
  }

  const makeGET = path => call('GET', path);

  function makePOST(path, name, value) {
    let body;
    if (name !== undefined && name !== null) {
      body = new FormData();
      body.append('name', String(name));
      if (value !== undefined && value !== null) body.append('value', String(value));
    }
    return call('POST', path, body);
  }

  async function ping() {
    const data = await makeGET('server/status/ping');
    if (data.success) {
      setServerStatus('Online', 'success');
      if (data.hostname) setServerHostname(data.hostname);
    } else {
      notify('error')('Offline', `Cannot connect to the server: ${data.error || 'no reply'}`);
    }
    return data;
  }

  async function getVersion() {
    const data = await makeGET('server/status/version');
    if (data.success) {
      window._version = data.version !== undefined ? data.version : data.message;
      const node = $('server-version');
      if (node && data.message) node.textContent = String(data.message);
    }
    return data;
  }

  async function copyToClipboard(elementId) {
    const node = $(elementId);
    if (!node) return false;
    const value = 'value' in node && typeof node.value === 'string' ? node.value : node.textContent;
    try {
      await navigator.clipboard.writeText(value);
      return true;
    } catch {
      // Pages over plain http (not localhost) have no clipboard API.
      if (typeof node.select !== 'function') return false;
      node.select();
      try { return document.execCommand('copy'); } catch { return false; }
    }
  }

  define('showLogOutput', logOutput);
  define('showError', notify('error'));
  define('showWarning', notify('warn'));
  define('showInfo', notify('info'));
  define('setServerStatus', setServerStatus);
  define('setServerHostname', setServerHostname);
  define('showCommunication', showCommunication);
  define('makeGET', makeGET);
  define('makePOST', makePOST);
  define('ping', ping);
  define('getVersion', getVersion);
  define('copyToClipboard', copyToClipboard);
})();
