// The explorer (explorer.html): a tab per module category holding each
// running module's explorer UI, as CodeProject.AI's explorer does
// (docs/protocol.md §2.4, §2.6). Module UIs written for CodeProject's
// explorer call the helper API of server.js and explorer.js and write into
// the shared output area (#results, #imgPreview, #status); their errors are
// shown on the page (#ui-errors), not only in the console.
'use strict';
(() => {
  const { el, text } = modhost;
  const $ = id => document.getElementById(id);

  const REFRESH_MS = 10000;

  const categories = new Map();  // category -> {tab, panel}
  const modules = new Map();     // moduleId -> section element
  let selected = null;           // the category shown
  let userChose = false;         // set by a click on a tab
  // A category named in the URL (#Generative%20AI) is selected once it
  // exists; without one, the chat's tab, which most people come for.
  const wanted = decodeURIComponent(location.hash.slice(1)) || 'Generative AI';

  // ---- tabs --------------------------------------------------------------

  function categoryPanel(category) {
    let entry = categories.get(category);
    if (entry) return entry;
    const tab = el('button', {
      type: 'button', role: 'tab', 'data-category': category, 'aria-selected': 'false',
      onclick: () => select(category, true),
    }, category);
    const panel = el('section', { class: 'tab-panel', role: 'tabpanel', 'data-category': category, hidden: true });
    entry = { tab, panel };
    categories.set(category, entry);
    $('panels').append(panel);
    // Keep the tabs in alphabetical order whatever order modules start in.
    const tabs = $('tabs');
    const after = [...tabs.children].find(t => t.dataset.category.localeCompare(category) > 0);
    tabs.insertBefore(tab, after || null);
    return entry;
  }

  function select(category, byUser) {
    selected = category;
    userChose = userChose || byUser;
    for (const [name, { tab, panel }] of categories) {
      tab.setAttribute('aria-selected', String(name === category));
      panel.hidden = name !== category;
    }
    if (byUser) history.replaceState(null, '', `#${encodeURIComponent(category)}`);
  }

  // ---- module UIs --------------------------------------------------------

  // Injects a module's explorer UI. Its html, css and script are the
  // module's own code (installed by the administrator, like the module
  // itself), so they go in as markup and a running script; every `_MID_`
  // becomes the module's key so that several modules' ids cannot clash.
  let injecting = null;  // the module whose script is being run, for errors
  function injectExplorerUI(body, moduleId, ui) {
    const key = modhost.uiKey(moduleId);
    const sub = s => String(s || '').split('_MID_').join(key);
    if (ui.css) document.head.append(el('style', { 'data-module-id': moduleId }, sub(ui.css)));
    body.innerHTML = sub(ui.html);
    if (ui.script) {
      // A <script> created with createElement runs when attached (one set
      // through innerHTML would not).
      const script = document.createElement('script');
      script.dataset.moduleId = moduleId;
      script.textContent = sub(ui.script);
      // An error thrown while it runs reaches the window's error handler
      // before append returns.
      injecting = moduleId;
      try {
        body.append(script);
      } finally {
        injecting = null;
      }
    }
  }

  // The fallback for a module without an explorer UI: a form per POST route.
  function routeForm(m, route, index) {
    const prefix = `${modhost.uiKey(m.moduleId)}route${index}_`;
    const fields = [];
    // novalidate: the server checks the inputs and its message says why.
    const form = el('form', { class: 'route-form', 'data-route': route.route, novalidate: true },
      el('h3', {}, route.name || route.route),
      el('div', { class: 'route' }, `POST /v1/${route.route}`),
      route.description ? el('p', { class: 'muted' }, route.description) : null);
    for (const input of route.inputs || []) {
      const id = prefix + String(input.name).replace(/[^A-Za-z0-9_-]/g, '');
      const def = input.defaultValue ?? '';
      let control;
      switch (input.type) {
        case 'File': control = el('input', { type: 'file', id }); break;
        case 'Boolean': control = el('input', { type: 'checkbox', id, checked: def === true || def === 'true' }); break;
        case 'Integer':
        case 'Float':
          control = el('input', {
            type: 'number', id, value: def, min: input.minValue, max: input.maxValue,
            step: input.type === 'Integer' ? 1 : 'any',
          });
          break;
        case 'Object': control = el('textarea', { id, rows: 3 }, def === '' ? '' : JSON.stringify(def)); break;
        default: control = el('input', { type: 'text', id, value: def });
      }
      control.dataset.input = input.name;
      fields.push({ input, control });
      form.append(
        el('label', { for: id }, input.name, el('span', { class: 'muted' }, ` (${input.type || 'Text'})`)),
        control);
      // (DOM append would write a null as the text "null".)
      if (input.description) form.append(el('div', { class: 'muted', style: 'font-size:.8rem' }, input.description));
    }
    const send = el('button', { type: 'submit', class: 'primary', 'data-action': 'send' }, 'Send');
    const cancel = el('button', { type: 'button', 'data-action': 'cancel', disabled: true }, 'Cancel');
    const status = el('span', { class: 'muted', 'data-role': 'status' });
    const output = el('pre', { class: 'reply', hidden: true });
    form.append(el('div', { class: 'button-row' }, send, cancel, status), output);

    let handle = null;
    const show = reply => {
      output.hidden = false;
      output.classList.toggle('error-text', reply.success === false);
      text(output, JSON.stringify(reply, null, 2));
      text(status, reply.commandStatus || (reply.success === false ? 'failed' : 'done'));
    };
    form.addEventListener('submit', ev => {
      ev.preventDefault();
      const values = {};
      for (const { input, control } of fields) {
        if (control.type === 'file') values[input.name] = control.files[0];
        else if (control.type === 'checkbox') values[input.name] = control.checked;
        else if (control.value !== '') values[input.name] = control.value;  // empty: the module's default
      }
      send.disabled = true;
      cancel.disabled = false;
      text(status, 'sending…');
      // Works for plain routes too: a reply that is not running (or queued) is final.
      handle = modhost.runLongCommand(route.route, m.moduleId, values, {
        onUpdate: show,
        onDone: reply => { show(reply); send.disabled = false; cancel.disabled = true; },
      });
    });
    cancel.addEventListener('click', () => { if (handle) handle.cancel(); });
    return form;
  }

  function addModule(m) {
    const category = (m.publishingInfo && m.publishingInfo.category) || 'Other';
    const { panel } = categoryPanel(category);
    const body = el('div', { class: 'module-body' });
    const section = el('section', { class: 'module-ui', 'data-module-id': m.moduleId },
      el('header', {},
        el('h2', {}, m.name || m.moduleId),
        el('span', { class: 'muted' }, `${m.moduleId !== m.name ? `${m.moduleId} ` : ''}${m.version || ''}`),
        el('span', { class: 'badge', 'data-status': 'Stopped', 'data-role': 'not-running', hidden: true }, 'not running')),
      m.publishingInfo && m.publishingInfo.description ? el('p', { class: 'muted' }, m.publishingInfo.description) : null,
      body);
    // Attached before the script is injected, so that it finds its markup.
    panel.append(section);
    modules.set(m.moduleId, section);

    const ui = (m.uiElements && m.uiElements.explorerUI) || {};
    if (String(ui.html || '').trim()) {
      injectExplorerUI(body, m.moduleId, ui);
    } else {
      const routes = (m.routeMaps || []).filter(r => String(r.method || 'POST').toUpperCase() === 'POST');
      routes.forEach((route, i) => body.append(routeForm(m, route, i)));
      if (!routes.length) body.append(el('p', { class: 'muted' }, 'This module has no routes to try.'));
    }
  }

  // ---- skills ------------------------------------------------------------

  // One form for every WebAssembly skill (skills/README.md): pick one, see
  // its description and input schema, send JSON, read its JSON output.
  let skillForm = null;
  function showSkills(names) {
    if (!names.length && !skillForm) return;
    if (!skillForm) {
      const { panel } = categoryPanel('Skills');
      const f = {
        select: el('select', { id: 'skill-name', onchange: () => describeSkill() }),
        about: el('p', { class: 'muted', id: 'skill-about' }),
        input: el('textarea', { id: 'skill-input', rows: 6, spellcheck: 'false' }, '{}'),
        run: el('button', { type: 'button', id: 'skill-run', onclick: () => runSkill() }, 'Run'),
        status: el('p', { id: 'skill-status', role: 'status' }),
        output: el('pre', { id: 'skill-output', class: 'output' }),
      };
      panel.append(el('section', { class: 'module-ui', 'data-skills': '' },
        el('header', {}, el('h2', {}, 'Skills'),
          el('span', { class: 'muted' }, 'WebAssembly components of pharia:skill 0.3')),
        el('label', {}, 'Skill ', f.select), f.about,
        el('label', { class: 'block' }, 'Input (JSON)', f.input),
        f.run, f.status, f.output));
      skillForm = f;
    }
    const f = skillForm;
    const current = [...f.select.options].map(o => o.value);
    if (current.join('\n') !== names.join('\n')) {
      const chosen = f.select.value;
      f.select.replaceChildren(...names.map(n => el('option', { value: n }, n)));
      if (names.includes(chosen)) f.select.value = chosen;
      describeSkill();
    }
  }

  async function describeSkill() {
    const f = skillForm;
    const name = f.select.value;
    if (!name) { text(f.about, 'No skill is deployed.'); return; }
    try {
      const meta = await modhost.get(`skills/${name}/metadata`);
      const schema = meta.input_schema ? ` — input schema: ${JSON.stringify(meta.input_schema)}` : '';
      text(f.about, `${meta.description || 'No description.'}${schema}`);
    } catch (err) {
      text(f.about, `metadata: ${err.message}`);
    }
  }

  async function runSkill() {
    const f = skillForm;
    f.run.disabled = true;
    text(f.status, `running ${f.select.value}…`);
    text(f.output, '');
    const started = performance.now();
    try {
      const { output, jobId } = await modhost.runSkill(f.select.value, f.input.value);
      text(f.status, `done in ${Math.round(performance.now() - started)} ms (job ${jobId})`);
      text(f.output, JSON.stringify(output, null, 2));
    } catch (err) {
      text(f.status, `failed: ${err.message}`);
    } finally {
      f.run.disabled = false;
    }
  }

  // ---- errors of module UIs ---------------------------------------------

  // An error thrown by a module UI's script (at once or later, in a click
  // handler or a promise) is shown on the page, naming the module when it
  // can be told; the same message shown twice is counted, not repeated.
  const errors = new Map();  // message -> {item, count}
  function showUiError(message) {
    let entry = errors.get(message);
    if (!entry) {
      entry = { item: el('li', {}), count: 0 };
      errors.set(message, entry);
      $('ui-errors-list').append(entry.item);
    }
    entry.count += 1;
    text(entry.item, entry.count > 1 ? `${message} (${entry.count} times)` : message);
    $('ui-errors').hidden = false;
  }
  // The module whose UI is on the shown tab, for errors that carry no
  // better clue (a click handler's error happens on the shown tab).
  function shownModules() {
    const entry = categories.get(selected);
    if (!entry) return '';
    return [...entry.panel.querySelectorAll('.module-ui')].map(sec => sec.dataset.moduleId).join(', ');
  }
  window.addEventListener('error', ev => {
    showUiError(`${injecting || shownModules() || 'a module UI'}: ${ev.message}`);
  });
  window.addEventListener('unhandledrejection', ev => {
    const why = ev.reason && ev.reason.message ? ev.reason.message : String(ev.reason);
    showUiError(`${injecting || shownModules() || 'a module UI'}: ${why}`);
  });
  $('ui-errors-dismiss').addEventListener('click', () => {
    errors.clear();
    $('ui-errors-list').replaceChildren();
    $('ui-errors').hidden = true;
  });

  // ---- refresh -----------------------------------------------------------

  async function refresh() {
    let running;
    try {
      running = (await modhost.get('module/list/running')).modules || [];
      setConnected(true);
    } catch (err) {
      setConnected(false, err.message);
      return;
    }
    const ids = new Set(running.map(m => m.moduleId));
    for (const m of running) {
      if (!modules.has(m.moduleId)) addModule(m);
    }
    // A module that stopped keeps its UI (and whatever the user typed),
    // dimmed; it comes back to life when it is Started again.
    for (const [id, section] of modules) {
      const up = ids.has(id);
      section.classList.toggle('not-running', !up);
      section.querySelector('[data-role="not-running"]').hidden = up;
    }
    try {
      showSkills(await modhost.get('skills'));
    } catch { /* the server answers the modules; skills show on the next refresh */ }
    $('empty').hidden = ids.size > 0 || Boolean(skillForm);
    // The first tab is shown at first; the one named in the URL as soon as
    // it exists, unless the user has picked one meanwhile.
    if (!userChose && categories.has(wanted) && selected !== wanted) select(wanted, false);
    else if (!categories.has(selected) && $('tabs').firstElementChild) select($('tabs').firstElementChild.dataset.category, false);
  }

  let connected = null;
  function setConnected(ok, why) {
    if (ok && connected !== true) refreshVersion();
    connected = ok;
    const c = $('connection');
    c.classList.toggle('offline', !ok);
    c.title = why || '';
    text(c, ok ? 'online' : 'server unreachable');
  }

  function refreshVersion() {
    modhost.get('server/status/version')
      .then(v => text('server-version', `modhost ${v.modhostVersion || '?'} · API ${v.message}`))
      .catch(() => {});
  }

  $('refresh').addEventListener('click', refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
