// The dashboard (index.html): server figures, the module table with
// start/stop/restart, and a live tail of the server log.
// Everything the server or a module sends is shown as text (modhost.text/el).
'use strict';
(() => {
  const { el, text } = modhost;
  const $ = id => document.getElementById(id);

  const POLL_MS = 2000;          // module table and system figures
  const LOG_POLL_MS = 1500;
  const LOG_MAX_ROWS = 500;      // older rows are dropped so the page stays light
  const LOST_CONTACT_SECS = 30;  // as CodeProject's dashboard
  // Statuses in which a module process exists or is on its way.
  const RUNNING = new Set(['Started', 'Starting', 'Restarting', 'Installing']);

  const rows = new Map();        // moduleId -> {tr, cells, buttons}
  let lastUptime = null;

  // Runs fn now and then every ms after it settles, so polls never overlap.
  function every(ms, fn) {
    const tick = async () => {
      try { await fn(); } catch (err) { console.error(err); }
      setTimeout(tick, ms);
    };
    tick();
  }

  let messageTimer = null;
  function showMessage(msg) {
    text('message', msg).hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { $('message').hidden = true; }, 10000);
  }

  let connected = null;
  function setConnected(ok) {
    // Back after an outage: the server may have been upgraded.
    if (ok && connected === false) refreshVersion().catch(() => {});
    connected = ok;
    const c = $('connection');
    c.classList.toggle('offline', !ok);
    text(c, ok ? 'online' : 'server unreachable');
  }

  // ---- server ------------------------------------------------------------

  async function refreshVersion() {
    const v = await modhost.get('server/status/version');
    text('server-version', `modhost ${v.modhostVersion || '?'} · API ${v.message}`);
  }

  async function refreshSystem() {
    const d = (await modhost.get('server/status/system-status')).data || {};
    // A smaller uptime means the server restarted: log ids start again at 1.
    if (lastUptime !== null && d.uptimeSecs < lastUptime) {
      resetLog();
      refreshVersion().catch(() => {});
    }
    lastUptime = d.uptimeSecs;
    text('cpu', `${Number(d.cpuUsage || 0).toFixed(0)} %`);
    text('cpu-count', d.cpuCount ? `${d.cpuCount} logical CPUs` : '');
    const pct = d.systemMemTotal ? ` (${Math.round(100 * d.systemMemUsage / d.systemMemTotal)} %)` : '';
    text('memory', `${modhost.bytes(d.systemMemUsage)}${pct}`);
    text('memory-total', `of ${modhost.bytes(d.systemMemTotal)}`);
    text('server-memory', modhost.bytes(d.serverMemUsage));
    text('uptime', modhost.duration(d.uptimeSecs));
    text('server-status', d.serverStatus);
    const hasGpu = d.gpuName !== null && d.gpuName !== undefined;
    $('gpu-card').hidden = !hasGpu;
    if (hasGpu) {
      text('gpu-name', `GPU: ${d.gpuName}`);
      text('gpu', d.gpuUsage === null || d.gpuUsage === undefined ? '–' : `${Number(d.gpuUsage).toFixed(0)} %`);
      text('gpu-memory', d.gpuMemUsage === null || d.gpuMemUsage === undefined ? '' : `${modhost.bytes(d.gpuMemUsage)} used`);
    }
  }

  // ---- modules -----------------------------------------------------------

  // How a status word reads on the page, where CodeProject's word is not
  // plain English; the word itself stays in `data-status` and the tooltip.
  const STATUS_LABELS = {
    NoAutoStart: 'Ready', NotStarted: 'Not started', NotAvailable: 'Not available',
    FailedStart: 'Failed to start',
  };

  // Rows are built once and updated in place, so a button is never replaced
  // under the user's pointer.
  function buildRow(m) {
    const id = m.moduleId;
    const cells = {
      name: el('span', { class: 'module-name' }),
      id: el('span', { class: 'module-id' }),
      status: el('span', { class: 'badge status' }),
      error: el('span', { class: 'last-error' }),
      load: el('span', { class: 'load' }),
      version: el('td', { class: 'version' }),
      requests: el('td', { class: 'num requests' }),
      queued: el('td', { class: 'num queued' }),
      lastSeen: el('td', { class: 'last-seen' }),
      device: el('td', { class: 'device' }),
    };
    const buttons = {};
    for (const [action, label] of [['start', 'Start'], ['stop', 'Stop'], ['restart', 'Restart']]) {
      buttons[action] = el('button', {
        type: 'button', 'data-action': action, class: action === 'stop' ? 'danger' : null,
        onclick: () => act(id, action),
      }, label);
    }
    const tr = el('tr', { 'data-module-id': id },
      el('td', { class: 'name' }, cells.name, cells.id),
      el('td', {}, cells.status, cells.load, cells.error),
      cells.version, cells.requests, cells.queued, cells.lastSeen, cells.device,
      el('td', { class: 'actions' }, Object.values(buttons)));
    return { tr, cells, buttons, pending: false };
  }

  function updateRow(row, m) {
    const { cells, buttons, tr } = row;
    const s = m.status;
    tr.dataset.status = s;
    text(cells.name, m.name);
    text(cells.id, m.moduleId !== m.name ? m.moduleId : '');
    text(cells.status, STATUS_LABELS[s] || s);
    cells.status.title = s;
    cells.status.dataset.status = s;
    let problem = RUNNING.has(s) && s !== 'Restarting' ? '' : (m.lastError || '');
    if (s === 'Restarting' && m.nextStart) {
      const wait = Math.max(0, Math.ceil((Date.parse(m.nextStart) - Date.now()) / 1000));
      problem = `crash ${m.crashes} in a row; next start in ${wait} s. ${problem}`;
    }
    text(cells.error, problem);
    text(cells.load, RUNNING.has(s) ? loadText(m.statusData) : '');
    text(cells.version, m.version);
    text(cells.requests, m.requestCount);
    text(cells.queued, m.queued);
    text(cells.device, RUNNING.has(s) ? m.inferenceDevice : '');

    const seenSecs = m.lastSeen ? (Date.now() - Date.parse(m.lastSeen)) / 1000 : null;
    const lost = s === 'Started' && seenSecs !== null && seenSecs > LOST_CONTACT_SECS;
    cells.lastSeen.replaceChildren(m.lastSeen ? modhost.ago(m.lastSeen) : 'never');
    if (lost) cells.lastSeen.append(' ', el('span', { class: 'lost-contact', title: 'No poll or status from the module for over 30 s' }, 'LostContact'));
    tr.toggleAttribute('data-lost-contact', lost);

    if (!row.pending) {
      buttons.start.disabled = RUNNING.has(s) || s === 'Stopping' || s === 'NotAvailable';
      buttons.stop.disabled = !(RUNNING.has(s) || (m.autoStart && !['Stopped', 'Stopping', 'NotAvailable'].includes(s)));
      buttons.restart.disabled = ['NotAvailable', 'Installing', 'Stopping'].includes(s);
    }
  }

  // A module with several slots for long commands (LlamaChat's chats)
  // reports them, and LlamaChat its tokens per second, in its statusData.
  function loadText(data) {
    const load = data && data.longCommands;
    if (!load || (load.slots <= 1 && !load.queued)) return '';
    let line = `${load.busy}/${load.slots} slots busy`;
    if (load.queued) line += `, ${load.queued} waiting`;
    if (typeof data.tokensPerSecond === 'number') line += `, ${data.tokensPerSecond} tokens/s`;
    return line;
  }

  async function act(moduleId, action) {
    const row = rows.get(moduleId);
    row.pending = true;
    Object.values(row.buttons).forEach(b => { b.disabled = true; });
    try {
      if (action === 'restart') await modhost.setting(moduleId, 'Restart');
      else await modhost.setting(moduleId, 'AutoStart', action === 'start');
    } catch (err) {
      showMessage(`${action} ${moduleId}: ${err.message}`);
    } finally {
      row.pending = false;
      refreshModules().catch(() => {});
    }
  }

  async function refreshModules() {
    const statuses = (await modhost.get('module/list/status')).statuses || [];
    const seen = new Set();
    for (const m of statuses) {
      seen.add(m.moduleId);
      let row = rows.get(m.moduleId);
      if (!row) {
        row = buildRow(m);
        rows.set(m.moduleId, row);
        $('modules').append(row.tr);
      }
      updateRow(row, m);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    $('no-modules').hidden = statuses.length > 0;
    updateFilter(statuses);
    // Skill runs are jobs of no module: the jobs API lists them.
    const skillJobs = ((await modhost.get('jobs?status=running')).jobs || [])
      .filter(j => String(j.moduleId).startsWith('skill:'))
      .map(j => ({ id: j.id, module: j.moduleId, status: j.status, createdAt: j.createdAt, chars: j.reply.length }));
    updateJobs(statuses, skillJobs);
  }

  // ---- skills ------------------------------------------------------------

  async function refreshSkills() {
    const s = await modhost.get('skills/status');
    const rowsNow = (s.skills || []).map(k => el('tr', { 'data-skill': k.name },
      el('td', {}, k.name), el('td', { class: 'num' }, modhost.bytes(k.bytes)),
      el('td', { class: 'muted' }, k.path),
      el('td', { class: 'actions' }, el('a', { href: '/explorer.html#Skills' }, 'Try'))));
    $('skills').replaceChildren(...rowsNow);
    const l = s.limits || {};
    text('skills-about', `${rowsNow.length ? '' : 'No skill is deployed. '}Skills are read from ${(s.folders || []).join(', ')}` +
      ` ({namespace}/{name}.wasm, pharia:skill ${s.witVersion}); each call may use ${l.cpuSeconds} s of CPU,` +
      ` ${l.memoryMiB} MiB of memory; ${l.instances} run at once.`);
  }

  // ---- running jobs --------------------------------------------------------

  const jobRows = new Map();     // job id -> {tr, age, progress, cancel}

  function updateJobs(statuses, others) {
    const running = statuses.flatMap(m => (m.runningJobs || []).map(j => ({ ...j, module: m.name })))
      .concat(others);
    const seen = new Set();
    for (const job of running) {
      seen.add(job.id);
      let row = jobRows.get(job.id);
      if (!row) {
        row = {
          age: el('td', { class: 'age' }),
          progress: el('td', { class: 'num progress' }),
          cancel: el('button', { type: 'button', class: 'danger', 'data-action': 'cancel-job',
                                 onclick: () => cancelJob(job.id, row) }, 'Cancel'),
        };
        row.tr = el('tr', { 'data-job-id': job.id },
          el('td', {}, job.module), el('td', { class: 'job-id', title: job.id }, job.id.slice(0, 8)),
          el('td', { class: 'job-status' }, job.status), row.age, row.progress,
          el('td', { class: 'actions' }, row.cancel));
        jobRows.set(job.id, row);
        $('jobs').append(row.tr);
      }
      text(row.age, modhost.duration((Date.now() - Date.parse(job.createdAt)) / 1000));
      text(row.progress, job.tokens !== null && job.tokens !== undefined ? `${job.tokens} tokens` : `${job.chars} chars`);
    }
    for (const [id, row] of jobRows) {
      if (!seen.has(id)) { row.tr.remove(); jobRows.delete(id); }
    }
    $('no-jobs').hidden = running.length > 0;
  }

  async function cancelJob(id, row) {
    row.cancel.disabled = true;
    try {
      await modhost.cancelJob(id);
    } catch (err) {
      row.cancel.disabled = false;
      showMessage(`cancel job ${id}: ${err.message}`);
    }
  }

  // ---- log tail ----------------------------------------------------------

  const log = { lastId: 0, generation: 0 };

  function updateFilter(statuses) {
    const select = $('log-filter');
    const have = new Set([...select.options].map(o => o.value));
    for (const m of statuses) {
      if (!have.has(m.moduleId)) select.append(el('option', { value: m.moduleId }, m.name));
    }
  }

  function resetLog() {
    log.lastId = 0;
    log.generation++;   // drops the reply of a poll already in flight
    $('log').replaceChildren();
  }

  function appendEntries(entries) {
    const box = $('log');
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    for (const e of entries) {
      log.lastId = Math.max(log.lastId, e.id);
      const time = new Date(e.timestamp);
      box.append(el('div', { class: 'log-entry', 'data-level': e.level, 'data-id': e.id, 'data-category': e.category },
        el('span', { class: 'time', title: e.timestamp }, Number.isNaN(time.getTime()) ? '' : time.toLocaleTimeString([], { hour12: false })),
        e.label ? el('span', { class: 'label' }, `[${e.label}]`) : null,
        e.entry));
    }
    while (box.childElementCount > LOG_MAX_ROWS) box.firstElementChild.remove();
    // Follow new lines only while the reader is at the bottom.
    if (entries.length && $('log-autoscroll').checked && atBottom) box.scrollTop = box.scrollHeight;
  }

  async function pollLog() {
    const generation = log.generation;
    const query = new URLSearchParams({ count: log.lastId ? 500 : 200, last_id: log.lastId });
    const filter = $('log-filter').value;
    if (filter) query.set('moduleId', filter);
    const reply = await modhost.get(`log/list?${query}`);
    if (generation === log.generation) appendEntries(reply.entries || []);
  }

  // ---- start -------------------------------------------------------------

  $('log-filter').addEventListener('change', () => { resetLog(); pollLog().catch(() => {}); });
  $('log-clear').addEventListener('click', () => $('log').replaceChildren());
  $('log-autoscroll').addEventListener('change', e => {
    if (e.target.checked) $('log').scrollTop = $('log').scrollHeight;
  });

  refreshVersion().catch(() => {});
  every(POLL_MS, async () => {
    const results = await Promise.allSettled([refreshModules(), refreshSystem(), refreshSkills()]);
    setConnected(results.some(r => r.status === 'fulfilled'));
  });
  every(LOG_POLL_MS, pollLog);
})();
