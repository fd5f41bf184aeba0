/* modhost: the helper functions that CodeProject.AI Server's explorer gives
 * module UIs (CodeProject serves them as /assets/explorer.js). A module's
 * explorer UI script, injected into the explorer page or run in its own
 * explore.html, calls these as page globals. Plain ES2020, no build step,
 * classic script; load it after server.js. Loading it twice keeps the first
 * copy, and a name the page already defined is left alone. A page that
 * loads it without server.js gets server.js loaded beside it.
 *
 * Written from the behaviour module UIs expect (docs/protocol.md §2.6), not
 * from CodeProject's code. Module and server strings are escaped wherever
 * this file builds markup; setResultsHtml alone takes markup, on purpose.
 *
 * Element ids (constants): resultDivId = "results", imagePreviewId =
 *   "imgPreview", soundPreviewId = "sndPreview", imgResultMaskId = "imgMask",
 *   imageResultId = "imgResult". Every function does nothing (and does not
 *   throw) when its elements are missing. Writing into one of them also
 *   unhides it and its [data-shared-output] container (the explorer page's
 *   #shared-output).
 *   GetBenchmarkCustomModelList = null: a vision module may set it to its
 *   async () => [{name, value}] | null custom-model getter.
 *
 *   submitRequest(route, apiName, images, parameters[, doneFunc[, failFunc]])
 *       -> Promise<object | null>
 *     POSTs multipart form data to {base}/v1/{route}[/{apiName}] (base: the
 *     #serviceUrl input's value, else apiServiceUrl). images: File/Blob
 *     array (or one), sent as image1, image2, ...; parameters: [[name,
 *     value], ...] (modhost: a plain {name: value} object works too); a File
 *     or Blob value is sent as a file, null/undefined values are left out.
 *     Times out after #serviceTimeoutSecTxt's value (positive number) or
 *     serviceTimeoutSec seconds. Sends X-API-Key when modhost.apiKey (api.js)
 *     is set. Toggles #communication (showCommunication) while it runs.
 *     Resolves to the reply's JSON object, `success: false` included; then
 *     showError(null, reply.error) shows why, unless callbacks were given.
 *     modhost: an HTTP 4xx/5xx whose body is JSON (modhost answers bad input
 *     with 4xx {success: false, error}) also resolves to that JSON, after
 *     showError. Resolves to null, after showError naming the URL and the
 *     problem, on a network error, a timeout, or a reply that is not a JSON
 *     object. Never rejects. A successful reply clears an error left in
 *     #status by an earlier request.
 *     Old callback style: when doneFunc is a function, doneFunc(reply) is
 *     called when reply.success, else failFunc(reply) (default
 *     displayBaseResults; reply is null when none came).
 *
 *   setResultsHtml(html)               #results' innerHTML = html.
 *   getProcessingMetadataHtml(data) -> string
 *     "<table class='timing-table'>" with a row for each truthy field:
 *     moduleId ("Processed by"), processedBy ("Processed on"),
 *     analysisRoundTripMs, processMs, inferenceMs (" ms"), timestampUTC.
 *   displayBaseResults(data)           #results: "Operation successful" or
 *     "Operation failed", data.error (if present) or data.message, timings.
 *   showPredictionSummary(data, sortByConfidence = true)
 *     #results: a #/Label/Confidence table of data.predictions (sorted in
 *     place, most confident first), then timings.
 *   confidence(v) -> string            "87%", or "" when v is not a number.
 *
 *   previewImage(fileChooser)          showPreviewImage(fileChooser.files[0]).
 *   showPreviewImage(file)             #imgPreview shows the image file.
 *   clearImagePreview()                hides #imgPreview; empties #imgMask
 *                                      when there is no #imgResult.
 *   clearImageResult()                 empties #imgMask; hides the result
 *                                      image (#imgResult, else #imgPreview).
 *   showResultsImage(base64, width?, height?)   the result image shows the
 *                                      PNG (width/height in px).
 *   showResultsImageData(data, width?, height?) the same with data.imageBase64.
 *   showResultsBoundingBoxes(predictions, sort = true)
 *     An SVG in #imgMask over the result image: a frame and a label
 *     ("label 87%", or userid) per prediction's x_min/y_min/x_max/y_max,
 *     scaled from the image's natural size to its rendered size; the most
 *     confident drawn last when sorting. Waits for the image to load.
 *   showResultsMasks(predictions)      the same with each prediction.mask
 *     polygon ([[x, y], ...], [{x, y}, ...] or [x, y, x, y, ...]) filled.
 *   adjustOverlayToFitResultImage()    places #imgMask over the result image.
 *   previewSound(fileChooser)          setSound(fileChooser.files[0]).
 *   setSound(file)                     #sndPreview (its <source>) plays file.
 *   previewVideo(), setVideo()         no-ops, as in CodeProject.
 *   setModelList(selectId, list)       the <select> gets exactly the options
 *     of list ([{name, value}] or strings): missing ones added, others removed.
 *   delay(ms) -> Promise               resolves after ms milliseconds.
 *   showLogOutput(text, variant)       defined by server.js.
 *
 * Differences from CodeProject: the two callback-style arguments work again
 * (CodeProject 2.6+ ignores them); showCommunication(false) also runs after
 * a failure; a wrong file type is reported with showError, not alert(); the
 * bounding-box overlay is frames and labels over the image rather than a
 * dimmed copy of it, and the image stays visible.
 */
(() => {
  'use strict';
  if (typeof window.submitRequest === 'function') return;

  const $ = id => (id ? document.getElementById(id) : null);
  const define = (name, value) => {
    if (!(name in window)) window[name] = value;
  };

  // ---- fallbacks when server.js is not loaded -----------------------------

  const scriptOrigin = (() => {
    try {
      const src = document.currentScript && document.currentScript.src;
      const url = src ? new URL(src) : null;
      return url && /^https?:$/.test(url.protocol) ? url.origin : '';
    } catch {
      return '';
    }
  })();

  function reveal(node) {
    if (!node) return;
    node.hidden = false;
    const area = node.closest && node.closest('[data-shared-output]');
    if (area) area.hidden = false;
  }

  // server.js holds showError, showLogOutput and the rest: a page that
  // loads this file alone (as older CodeProject module pages do) gets it
  // loaded beside. Until it arrives, the address and timeout have plain
  // values, and messages go to the console.
  define('apiServiceUrl', scriptOrigin || (/^https?:$/.test(location.protocol) ? location.origin : 'http://localhost:32168'));
  define('serviceTimeoutSec', 30);
  if (typeof window.showLogOutput !== 'function' && document.head) {
    const server = document.createElement('script');
    server.src = `${scriptOrigin}/assets/server.js`;
    document.head.append(server);
  }

  // Calls a page helper that may have been replaced or removed, never throwing.
  const page = (name, ...args) => {
    try {
      if (typeof window[name] === 'function') return window[name](...args);
      if (name === 'showError') console.error(...args.filter(Boolean));
    } catch (err) {
      console.error(`${name} failed`, err);
    }
    return undefined;
  };

  // ---- constants -----------------------------------------------------------

  define('resultDivId', 'results');
  define('imagePreviewId', 'imgPreview');
  define('soundPreviewId', 'sndPreview');
  define('imgResultMaskId', 'imgMask');
  define('imageResultId', 'imgResult');
  define('GetBenchmarkCustomModelList', null);

  const resultsEl = () => $(window.resultDivId || 'results');
  const previewEl = () => $(window.imagePreviewId || 'imgPreview');
  const maskEl = () => $(window.imgResultMaskId || 'imgMask');
  const resultImgEl = () => $(window.imageResultId || 'imgResult') || previewEl();

  const escapeHtml = value => String(value === null || value === undefined ? '' : value)
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;').replace(/'/g, '&#39;');

  // ---- requests ------------------------------------------------------------

  function serviceBase() {
    const input = $('serviceUrl');
    const typed = input && typeof input.value === 'string' ? input.value.trim() : '';
    return (typed || window.apiServiceUrl || '').replace(/\/+$/, '');
  }

  function timeoutSec() {
    const input = $('serviceTimeoutSecTxt');
    const typed = input ? parseFloat(input.value) : NaN;
    if (typed > 0) return typed;
    return Number(window.serviceTimeoutSec) > 0 ? Number(window.serviceTimeoutSec) : 30;
  }

  function appendValue(form, name, value) {
    if (value === null || value === undefined) return;
    if (value instanceof Blob) form.append(name, value, value.name || name);
    else form.append(name, String(value));
  }

  function buildForm(images, parameters) {
    const form = new FormData();
    const list = images instanceof Blob ? [images] : Array.from(images || []);
    list.forEach((image, i) => { if (image) appendValue(form, `image${i + 1}`, image); });
    const pairs = Array.isArray(parameters) ? parameters
      : parameters && typeof parameters === 'object' ? Object.entries(parameters) : [];
    for (const pair of pairs) {
      if (Array.isArray(pair) && pair.length) appendValue(form, String(pair[0]), pair[1]);
    }
    return form;
  }

  // The POST itself: {data, httpStatus} (a JSON object, maybe an HTTP
  // error's body) or {error} (why no usable reply came).
  async function post(url, form) {
    const secs = timeoutSec();
    const headers = window.modhost && window.modhost.apiKey ? { 'X-API-Key': window.modhost.apiKey } : {};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), secs * 1000);
    let res;
    try {
      res = await fetch(url, { method: 'POST', body: form, headers, signal: abort.signal });
    } catch (err) {
      return {
        error: abort.signal.aborted
          ? `No reply from ${url} within ${secs} s. Try increasing the timeout.`
          : `Could not reach ${url}: ${(err && err.message) || err}. Is the server running?`,
      };
    } finally {
      clearTimeout(timer);
    }
    let data;
    try {
      data = await res.json();
    } catch {
      return { error: `${url} answered HTTP ${res.status} with something that is not JSON.` };
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      return { error: `${url} answered HTTP ${res.status} without a JSON object.` };
    }
    return { data, httpStatus: res.status, ok: res.ok };
  }

  async function submitRequest(route, apiName, images, parameters, doneFunc, failFunc) {
    const url = `${serviceBase()}/v1/${String(route).replace(/^\/+/, '')}${apiName ? `/${apiName}` : ''}`;
    const callbacks = typeof doneFunc === 'function';
    page('showCommunication', true);
    let data = null;
    try {
      const reply = await post(url, buildForm(images, parameters));
      data = reply.data || null;
      if (reply.error) {
        page('showError', null, reply.error);
      } else if (!reply.ok) {
        // modhost answers bad input and unknown routes with 4xx + JSON.
        page('showError', null, data.error ? String(data.error) : `${url} answered HTTP ${reply.httpStatus}.`);
      } else if (data.success === false) {
        // With callbacks, failFunc shows it (displayBaseResults by default).
        if (!callbacks) page('showError', null, String(data.error || `The request to ${url} failed.`));
      } else {
        // A success clears an error left over from an earlier request.
        const status = $('status');
        if (status && status.dataset.variant === 'error') page('showLogOutput', '');
      }
    } catch (err) {
      page('showError', null, `Request to ${url} failed: ${(err && err.message) || err}`);
      data = null;
    } finally {
      page('showCommunication', false);
    }
    if (callbacks) {
      try {
        if (data && data.success) doneFunc(data);
        else (typeof failFunc === 'function' ? failFunc : displayBaseResults)(data);
      } catch (err) {
        page('showError', null, `The module's result handler failed: ${(err && err.message) || err}`);
      }
    }
    return data;
  }

  // ---- results -------------------------------------------------------------

  function setResultsHtml(html) {
    const node = resultsEl();
    if (!node) return;
    node.innerHTML = html === null || html === undefined ? '' : String(html);
    reveal(node);
  }

  function getProcessingMetadataHtml(data) {
    if (!data || typeof data !== 'object') return '';
    const rows = [
      ['Processed by', data.moduleId, ''],
      ['Processed on', data.processedBy, ''],
      ['Analysis round trip', data.analysisRoundTripMs, ' ms'],
      ['Processing', data.processMs, ' ms'],
      ['Inference', data.inferenceMs, ' ms'],
      ['Timestamp (UTC)', data.timestampUTC, ''],
    ].filter(([, value]) => value);
    return "<table class='timing-table'>" + rows
      .map(([name, value, unit]) => `<tr><td>${escapeHtml(name)}</td><td>${escapeHtml(value)}${unit}</td></tr>`)
      .join('') + '</table>';
  }

  function displayBaseResults(data) {
    if (!data || typeof data !== 'object') {
      setResultsHtml('No results returned');
      return;
    }
    const ok = Boolean(data.success);
    const detail = 'error' in data ? data.error : data.message;
    setResultsHtml(
      `<div class='${ok ? 'text-success' : 'text-error'}'>Operation ${ok ? 'successful' : 'failed'}</div>` +
      (detail ? `<div>${escapeHtml(detail)}</div>` : '') +
      getProcessingMetadataHtml(data));
  }

  function confidence(v) {
    if (v === null || v === undefined || v === '' || !Number.isFinite(Number(v))) return '';
    return `${Math.round(Number(v) * 100)}%`;
  }

  const labelOf = p => (p && (p.label || p.userid)) || '';

  function showPredictionSummary(data, sortByConfidence = true) {
    const predictions = data && Array.isArray(data.predictions) ? data.predictions : [];
    if (!predictions.length) {
      setResultsHtml('No predictions returned' + getProcessingMetadataHtml(data));
      return;
    }
    if (sortByConfidence) predictions.sort((a, b) => (Number(b && b.confidence) || 0) - (Number(a && a.confidence) || 0));
    const rows = predictions.map((p, i) =>
      `<tr><td>${i + 1}</td><td>${escapeHtml(labelOf(p) || 'Face')}</td><td>${escapeHtml(confidence(p && p.confidence))}</td></tr>`);
    setResultsHtml(
      "<table class='prediction-table'><thead><tr><th>#</th><th>Label</th><th>Confidence</th></tr></thead><tbody>" +
      rows.join('') + '</tbody></table>' + getProcessingMetadataHtml(data));
  }

  // ---- images --------------------------------------------------------------

  let previewUrl = null;
  const isType = (file, kind) => Boolean(file) && typeof file.type === 'string' && file.type.startsWith(`${kind}/`);

  function watchLoad(img) {
    if (!img || img.dataset.overlayWatch) return;
    img.dataset.overlayWatch = '1';
    img.addEventListener('load', () => page('adjustOverlayToFitResultImage'));
  }

  function previewImage(fileChooser) {
    const file = fileChooser && fileChooser.files ? fileChooser.files[0] : null;
    if (file) showPreviewImage(file);
  }

  function showPreviewImage(file) {
    const img = previewEl();
    if (!img) return;
    clearImagePreview();
    if (!file) return;
    if (!isType(file, 'image')) {
      page('showError', null, 'Please select a valid image file.');
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    watchLoad(img);
    img.src = previewUrl;
    img.style.height = 'auto';
    img.style.visibility = 'visible';
    reveal(img);
  }

  function clearImagePreview() {
    const img = previewEl();
    if (img) img.style.visibility = 'hidden';
    if (!$(window.imageResultId || 'imgResult')) {
      const mask = maskEl();
      if (mask) mask.replaceChildren();
    }
  }

  function clearImageResult() {
    const mask = maskEl();
    if (mask) mask.replaceChildren();
    const img = resultImgEl();
    if (!img) return;
    img.style.visibility = 'hidden';
    img.src = '';
  }

  function showResultsImage(base64, width, height) {
    clearImageResult();
    const img = resultImgEl();
    if (!img || !base64) return;
    watchLoad(img);
    const b64 = String(base64);
    img.src = b64.startsWith('data:') ? b64 : `data:image/png;base64,${b64}`;
    if (width) img.style.width = `${width}px`;
    if (height) img.style.height = `${height}px`;
    img.style.visibility = 'visible';
    reveal(img);
  }

  function showResultsImageData(data, width, height) {
    if (data && data.imageBase64) showResultsImage(data.imageBase64, width, height);
  }

  function adjustOverlayToFitResultImage() {
    const img = resultImgEl();
    const mask = maskEl();
    if (!img || !mask) return;
    // Both are placed against the same (position: relative) wrapper.
    if (getComputedStyle(mask).position === 'static') {
      Object.assign(mask.style, { position: 'absolute', pointerEvents: 'none', zIndex: '10' });
    }
    Object.assign(mask.style, {
      left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`,
      width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
    });
  }

  const SVG = 'http://www.w3.org/2000/svg';
  const COLOURS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#0ea5a5', '#d61ad6', '#7a9a01', '#9a6324', '#000075'];

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function colourOf(label) {
    let hash = 0;
    for (const ch of String(label)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return COLOURS[hash % COLOURS.length];
  }

  // Draws an overlay over the result image once it is loaded and laid out;
  // `draw(svg, sx, sy, scale)` adds the shapes (sx, sy: natural -> rendered).
  function drawOverlay(predictions, sort, draw) {
    const img = resultImgEl();
    const mask = maskEl();
    if (!img || !mask || !Array.isArray(predictions) || !predictions.length) return;
    if (!img.complete || !img.naturalWidth) {
      img.addEventListener('load', () => drawOverlay(predictions, sort, draw), { once: true });
      return;
    }
    reveal(img);
    reveal(mask);
    img.style.visibility = 'visible';
    const width = img.clientWidth, height = img.clientHeight;
    if (!width || !height) return;
    const sx = width / img.naturalWidth, sy = height / img.naturalHeight;
    const list = predictions.filter(p => p && typeof p === 'object');
    if (sort) list.sort((a, b) => (Number(a.confidence) || 0) - (Number(b.confidence) || 0));
    const svg = svgEl('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'detections' });
    for (const p of list) draw(svg, p, sx, sy);
    mask.replaceChildren(svg);
    mask.style.visibility = 'visible';
    adjustOverlayToFitResultImage();
  }

  // A label in a coloured box with its top-left corner at (x, y), kept inside.
  function drawLabel(svg, text, colour, x, y) {
    if (!text) return;
    const size = 12, w = text.length * size * 0.62 + 6, h = size + 4;
    const width = Number(svg.getAttribute('width'));
    const lx = Math.max(0, Math.min(x, width - w)), ly = Math.max(0, y - h);
    svg.append(svgEl('rect', { x: lx, y: ly, width: w, height: h, fill: colour }));
    const label = svgEl('text', { x: lx + 3, y: ly + size, fill: '#fff', 'font-size': size, 'font-family': 'system-ui, sans-serif' });
    label.textContent = text;
    svg.append(label);
  }

  function boxLabel(p) {
    const name = labelOf(p);
    const conf = confidence(p.confidence);
    return [name, conf].filter(Boolean).join(' ');
  }

  function showResultsBoundingBoxes(predictions, sort = true) {
    drawOverlay(predictions, sort, (svg, p, sx, sy) => {
      const x1 = Number(p.x_min) * sx, y1 = Number(p.y_min) * sy;
      const x2 = Number(p.x_max) * sx, y2 = Number(p.y_max) * sy;
      if (![x1, y1, x2, y2].every(Number.isFinite)) return;
      const colour = colourOf(labelOf(p));
      svg.append(svgEl('rect', {
        x: Math.min(x1, x2), y: Math.min(y1, y2), width: Math.abs(x2 - x1), height: Math.abs(y2 - y1),
        fill: 'none', stroke: colour, 'stroke-width': 2,
      }));
      drawLabel(svg, boxLabel(p), colour, Math.min(x1, x2), Math.min(y1, y2));
    });
  }

  function maskPoints(mask) {
    if (!Array.isArray(mask)) return [];
    if (mask.every(v => typeof v === 'number')) {
      const points = [];
      for (let i = 0; i + 1 < mask.length; i += 2) points.push([mask[i], mask[i + 1]]);
      return points;
    }
    return mask.map(pt => (Array.isArray(pt) ? [pt[0], pt[1]] : pt && typeof pt === 'object' ? [pt.x, pt.y] : null))
      .filter(pt => pt && Number.isFinite(Number(pt[0])) && Number.isFinite(Number(pt[1])));
  }

  function showResultsMasks(predictions, sort = true) {
    drawOverlay(predictions, sort, (svg, p, sx, sy) => {
      const colour = colourOf(labelOf(p));
      const points = maskPoints(p.mask).map(([x, y]) => [Number(x) * sx, Number(y) * sy]);
      if (points.length >= 3) {
        svg.append(svgEl('polygon', {
          points: points.map(pt => pt.join(',')).join(' '),
          fill: colour, 'fill-opacity': 0.35, stroke: colour, 'stroke-width': 2,
        }));
      }
      const x = Number.isFinite(Number(p.x_min)) ? Number(p.x_min) * sx : points.length ? Math.min(...points.map(pt => pt[0])) : NaN;
      const y = Number.isFinite(Number(p.y_min)) ? Number(p.y_min) * sy : points.length ? Math.min(...points.map(pt => pt[1])) : NaN;
      if (Number.isFinite(x) && Number.isFinite(y)) drawLabel(svg, boxLabel(p), colour, x, y);
    });
  }

  // ---- sound, models, misc -------------------------------------------------

  let soundUrl = null;

  function previewSound(fileChooser) {
    const file = fileChooser && fileChooser.files ? fileChooser.files[0] : null;
    if (file) setSound(file);
  }

  function setSound(file) {
    const audio = $(window.soundPreviewId || 'sndPreview');
    if (!audio || !file) return;
    if (!isType(file, 'audio')) {
      page('showError', null, 'Please select a valid sound file.');
      return;
    }
    if (soundUrl) URL.revokeObjectURL(soundUrl);
    soundUrl = URL.createObjectURL(file);
    const source = audio.querySelector('source');
    if (source) source.src = soundUrl;
    else audio.src = soundUrl;
    if (typeof audio.load === 'function') audio.load();
    reveal(audio);
  }

  function setModelList(selectId, list) {
    const select = $(selectId);
    if (!select || !select.options || !Array.isArray(list)) return;
    const wanted = list
      .map(item => (item && typeof item === 'object' ? item : { name: item, value: item }))
      .filter(item => item.value !== null && item.value !== undefined)
      .map(item => ({ name: String(item.name ?? item.value), value: String(item.value) }));
    const values = new Set(wanted.map(item => item.value));
    for (const option of [...select.options]) {
      if (!values.has(option.value)) option.remove();
    }
    const have = new Set([...select.options].map(option => option.value));
    for (const item of wanted) {
      if (!have.has(item.value)) select.add(new Option(item.name, item.value));
    }
  }

  const delay = ms => new Promise(resolve => setTimeout(resolve, ms));

  define('submitRequest', submitRequest);
  define('setResultsHtml', setResultsHtml);
  define('getProcessingMetadataHtml', getProcessingMetadataHtml);
  define('displayBaseResults', displayBaseResults);
  define('showPredictionSummary', showPredictionSummary);
  define('confidence', confidence);
  define('previewImage', previewImage);
  define('showPreviewImage', showPreviewImage);
  define('clearImagePreview', clearImagePreview);
  define('clearImageResult', clearImageResult);
  define('showResultsImage', showResultsImage);
  define('showResultsImageData', showResultsImageData);
  define('showResultsBoundingBoxes', showResultsBoundingBoxes);
  define('showResultsMasks', showResultsMasks);
  define('adjustOverlayToFitResultImage', adjustOverlayToFitResultImage);
  define('previewSound', previewSound);
  define('setSound', setSound);
  define('previewVideo', () => {});
  define('setVideo', () => {});
  define('setModelList', setModelList);
  define('delay', delay);
})();
