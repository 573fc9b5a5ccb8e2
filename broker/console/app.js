// The Magnetar web console: a single page that browses and operates the cluster through the
// admin REST API (Pulsar's paths and JSON shapes), with the token the person signs in with.
// Hash routes:
//   #/overview                              clusters, brokers, bookies, bundles
//   #/tenants                               every tenant, namespace and topic, with search
//   #/t/{tenant}                            a tenant's namespaces
//   #/ns/{tenant}/{namespace}               a namespace's topics
//   #/topic/persistent/{tenant}/{ns}/{topic} a topic: stats, live charts, actions

import { LiveChart } from './chart.js';

const TOKEN_KEY = 'magnetar.console.token';
const POLL_MS = 2000;
const ADMIN = '/admin/v2';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  cluster: null,
};

// ------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'test') el.dataset.test = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces `el`'s children (arrays are flattened, null and false skipped). */
function setContent(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const $ = (selector, root = document) => root.querySelector(selector);
const enc = encodeURIComponent;

// ------------------------------------------------------------------------------------------
// Formatting

function trimmed(n, digits = 1) {
  return n.toFixed(digits).replace(/\.0+$/, '').replace(/(\.\d*?)0+$/, '$1');
}

const fmt = {
  /** 0.42, 12.5, 980, 1.2k, 34.5M */
  compact(n) {
    if (n == null || !Number.isFinite(n)) return '—';
    n += 0; // -0 shows as 0
    const a = Math.abs(n);
    if (a >= 1e9) return `${trimmed(n / 1e9, a >= 1e11 ? 0 : 1)}G`;
    if (a >= 1e6) return `${trimmed(n / 1e6, a >= 1e8 ? 0 : 1)}M`;
    if (a >= 1e3) return `${trimmed(n / 1e3, a >= 1e5 ? 0 : 1)}k`;
    if (Number.isInteger(n)) return String(n);
    if (a >= 100) return n.toFixed(0);
    if (a >= 10) return trimmed(n, 1);
    if (a === 0) return '0';
    return trimmed(n, 2) || '0';
  },
  /** Exact up to 9,999, compact beyond. */
  count(n) {
    if (n == null || !Number.isFinite(n)) return '—';
    n += 0;
    return Math.abs(n) < 10_000 ? n.toLocaleString('en-US') : fmt.compact(n);
  },
  rate(n) {
    return n == null || !Number.isFinite(n) ? '—' : `${fmt.compact(n)} msg/s`;
  },
  bytes(n) {
    if (n == null || !Number.isFinite(n)) return '—';
    n += 0;
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let value = n;
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    if (unit === 0) return `${Math.round(value)} B`;
    return `${trimmed(value, Math.abs(value) >= 100 ? 0 : 1)} ${units[unit]}`;
  },
  throughput(n) {
    return n == null || !Number.isFinite(n) ? '—' : `${fmt.bytes(n)}/s`;
  },
  percent(n) {
    return n == null || !Number.isFinite(n) ? '—' : `${trimmed(n, n >= 10 ? 0 : 1)}%`;
  },
  time(ms) {
    if (!ms) return '—';
    const d = new Date(Number(ms));
    if (Number.isNaN(d.getTime())) return String(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(
      d.getMinutes(),
    )}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  },
  ago(iso) {
    if (!iso) return '—';
    const then = new Date(iso).getTime();
    if (Number.isNaN(then)) return String(iso);
    const s = Math.max(0, Math.round((Date.now() - then) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
    return `${Math.floor(s / 86400)}d ago`;
  },
};

// ------------------------------------------------------------------------------------------
// The admin API

class ApiError extends Error {
  constructor(status, reason, method, path) {
    super(reason);
    this.status = status;
    this.reason = reason;
    this.method = method;
    this.path = path;
  }
}

/**
 * Calls the admin API with the signed-in token. Answers the parsed JSON (or text), or the
 * Response itself with `raw`. Throws ApiError with the server's `reason`; a 401 also brings
 * up the sign-in form.
 */
async function api(path, { method = 'GET', body, raw = false } = {}) {
  // The broker asked follows its own redirects to the owner of a topic for the console (a
  // browser drops the token on a redirect to another broker, which sends no CORS headers).
  const headers = { Accept: 'application/json', 'X-Magnetar-Console': '1' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  } catch (error) {
    throw new ApiError(0, `The broker does not answer (${error.message})`, method, path);
  }
  if (!response.ok) {
    let reason = response.statusText || `HTTP ${response.status}`;
    try {
      const text = await response.text();
      if (text) {
        try {
          reason = JSON.parse(text).reason || text;
        } catch {
          reason = text;
        }
      }
    } catch {
      // keep the status text
    }
    const error = new ApiError(response.status, reason, method, path);
    if (response.status === 401) showLogin(reason);
    throw error;
  }
  if (raw) return response;
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** `fn`'s answer, or `fallback` when it throws ApiError (for optional parts of a page). */
async function optional(promise, fallback = null) {
  try {
    return await promise;
  } catch (error) {
    if (error instanceof ApiError) return fallback;
    throw error;
  }
}

const topicBase = (tenant, ns, topic) => `${ADMIN}/persistent/${enc(tenant)}/${enc(ns)}/${enc(topic)}`;
const topicHref = (tenant, ns, topic) => `#/topic/persistent/${enc(tenant)}/${enc(ns)}/${enc(topic)}`;
const nsHref = (tenant, ns) => `#/ns/${enc(tenant)}/${enc(ns)}`;
const tenantHref = (tenant) => `#/t/${enc(tenant)}`;

/** "persistent://t/ns/x" -> {tenant, ns, topic} */
function splitTopic(full) {
  const m = /^(?:persistent|non-persistent):\/\/([^/]+)\/([^/]+)\/(.+)$/.exec(full);
  return m ? { tenant: m[1], ns: m[2], topic: m[3] } : null;
}

// ------------------------------------------------------------------------------------------
// Session: the token, the sign-in form

function tokenSubject(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(json).sub || null;
  } catch {
    return null;
  }
}

function renderSession() {
  const who = $('#whoami');
  const subject = state.token ? tokenSubject(state.token) : null;
  who.hidden = !state.token;
  who.textContent = subject ? `role ${subject}` : 'token set';
  who.title = subject ? `Signed in with a token for role "${subject}"` : 'Signed in with a token';
  $('#logout').hidden = !state.token;
  $('#login-open').hidden = !!state.token;
}

function showLogin(reason) {
  const screen = $('#login');
  const note = $('#login-reason');
  if (reason) {
    note.textContent = state.token
      ? `The broker refused this token: ${reason}`
      : `The broker asks for a token: ${reason}`;
    note.hidden = false;
  } else {
    note.hidden = true;
  }
  if (screen.hidden) {
    screen.hidden = false;
    $('#login-token').value = '';
    setTimeout(() => $('#login-token').focus(), 0);
  }
}

function hideLogin() {
  $('#login').hidden = true;
}

function setToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  renderSession();
}

function initSession() {
  renderSession();
  $('#login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#login-token').value.trim().replace(/^Bearer\s+/i, '');
    if (!token) {
      $('#login-reason').textContent = 'Paste a token first.';
      $('#login-reason').hidden = false;
      return;
    }
    setToken(token);
    hideLogin();
    if (!state.cluster) clusterPromise = null;
    clusterName();
    route();
  });
  $('#login-cancel').addEventListener('click', hideLogin);
  $('#login-open').addEventListener('click', () => showLogin());
  $('#logout').addEventListener('click', () => {
    setToken('');
    toast('Signed out');
    route();
  });
}

// ------------------------------------------------------------------------------------------
// Shared page pieces

function view() {
  return $('#view');
}

function setCrumbs(items) {
  const nav = $('#breadcrumbs');
  nav.replaceChildren();
  items.forEach((item, i) => {
    if (i > 0) nav.append(h('span', { class: 'sep', 'aria-hidden': 'true' }, '/'));
    const last = i === items.length - 1;
    nav.append(
      item.href && !last
        ? h('a', { href: item.href, dataset: { crumb: item.label } }, item.label)
        : h('span', { class: last ? 'current' : '', dataset: { crumb: item.label } }, item.label),
    );
  });
  document.title = `${items[items.length - 1]?.label ?? 'Console'} · Magnetar`;
}

function crumbsTo(tenant, ns) {
  const items = [{ label: 'Tenants', href: '#/tenants' }];
  if (tenant != null) items.push({ label: tenant, href: tenantHref(tenant) });
  if (ns != null) items.push({ label: ns, href: nsHref(tenant, ns) });
  return items;
}

function pageHead(title, subtitle, ...actions) {
  const mono = typeof subtitle === 'object' && subtitle?.mono;
  const text = mono ? subtitle.mono : subtitle;
  return h(
    'div',
    { class: 'page-head' },
    h(
      'div',
      { class: 'page-title' },
      h('h1', { test: 'page-title' }, title),
      text ? h('p', { class: mono ? 'muted mono' : 'muted' }, text) : null,
    ),
    h('div', { class: 'page-actions' }, actions),
  );
}

function card(title, { id, actions, note } = {}, ...body) {
  return h(
    'section',
    { class: 'card', id, test: id },
    title
      ? h(
          'div',
          { class: 'card-head' },
          h('h2', {}, title),
          note ? h('span', { class: 'muted small' }, note) : null,
          h('div', { class: 'card-actions' }, actions),
        )
      : null,
    h('div', { class: 'card-body' }, body),
  );
}

function loading(text = 'Loading…') {
  return h('div', { class: 'loading' }, h('span', { class: 'spinner' }), text);
}

function errorBox(error) {
  if (!(error instanceof ApiError)) {
    console.error(error);
    return h(
      'div',
      { class: 'alert alert-error', test: 'error' },
      h('strong', {}, 'Something went wrong'),
      h('p', {}, String(error?.message ?? error)),
    );
  }
  if (error.status === 403) {
    return h(
      'div',
      { class: 'alert alert-forbidden', test: 'forbidden' },
      h('strong', {}, 'Not allowed'),
      h('p', { class: 'reason', test: 'reason' }, error.reason),
      h(
        'p',
        { class: 'muted small' },
        `${error.method} ${error.path} answered 403. `,
        state.token ? 'Your token’s role may not do this.' : 'You are not signed in.',
      ),
      h(
        'button',
        { class: 'btn btn-small', type: 'button', onclick: () => showLogin() },
        state.token ? 'Use another token' : 'Sign in with a token',
      ),
    );
  }
  if (error.status === 401) {
    return h(
      'div',
      { class: 'alert alert-forbidden', test: 'unauthenticated' },
      h('strong', {}, 'Sign-in required'),
      h('p', { class: 'reason', test: 'reason' }, error.reason),
      h(
        'button',
        { class: 'btn btn-small btn-primary', type: 'button', onclick: () => showLogin(error.reason) },
        'Sign in',
      ),
    );
  }
  const title = error.status === 404 ? 'Not found' : error.status === 0 ? 'No answer' : `Error ${error.status}`;
  return h(
    'div',
    { class: 'alert alert-error', test: 'error' },
    h('strong', {}, title),
    h('p', { class: 'reason', test: 'reason' }, error.reason),
  );
}

/** A button (not a submit): `kind` adds classes (`btn-primary`, `btn-small`, ...). */
function button(label, kind, attrs = {}) {
  return h('button', { type: 'button', class: `btn ${kind}`.trim(), ...attrs }, label);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function badge(text, kind = '', attrs = {}) {
  return h('span', { class: `badge ${kind}`, ...attrs }, text);
}

function statCards(items) {
  return h(
    'div',
    { class: 'stats' },
    items.map((item) =>
      h(
        'div',
        { class: 'stat', test: item.test, dataset: { value: item.raw ?? '' } },
        h('div', { class: 'stat-label' }, item.label),
        h('div', { class: 'stat-value' }, item.value),
        item.sub ? h('div', { class: 'stat-sub' }, item.sub) : null,
      ),
    ),
  );
}

function updateStat(root, test, value, raw, sub) {
  const el = root.querySelector(`[data-test="${test}"]`);
  if (!el) return;
  el.dataset.value = raw ?? '';
  el.querySelector('.stat-value').textContent = value;
  const subEl = el.querySelector('.stat-sub');
  if (subEl && sub != null) subEl.textContent = sub;
}

let toastSeq = 0;
function toast(message, kind = 'ok') {
  const el = h('div', { class: `toast toast-${kind}`, test: 'toast', dataset: { seq: ++toastSeq } }, message);
  const box = $('#toasts');
  box.append(el);
  while (box.children.length > 2) box.firstElementChild.remove();
  setTimeout(() => el.classList.add('leaving'), 4200);
  setTimeout(() => el.remove(), 4600);
}

// ------------------------------------------------------------------------------------------
// Sortable tables whose rows are kept by key: live updates change cell text in place, so a
// row's buttons stay the same elements between polls.

function dataTable({ id, columns, rowKey, empty = 'Nothing here yet.', sort: initialSort = null }) {
  let sort = initialSort;
  let current = [];
  const rows = new Map();
  const headRow = h('tr');
  const tbody = h('tbody');
  const emptyRow = h('tr', { class: 'empty-row' }, h('td', { colspan: columns.length }, empty));
  const table = h('table', { class: 'table', id, test: id }, h('thead', {}, headRow), tbody);

  const valueOf = (col, item) => (col.value ? col.value(item) : item[col.key]);
  const sortValueOf = (col, item) => (col.sort ? col.sort(item) : valueOf(col, item));

  for (const col of columns) {
    const th = h(
      'th',
      {
        class: [col.num ? 'num' : '', col.sortable === false ? '' : 'sortable'].join(' '),
        dataset: { col: col.key },
        title: col.title,
      },
      h('span', {}, col.label),
      h('i', { class: 'sort-arrow', 'aria-hidden': 'true' }),
    );
    if (col.sortable !== false) {
      th.addEventListener('click', () => {
        // Numbers sort largest first, text A to Z; a second click reverses.
        const again = sort && sort.key === col.key;
        sort = { key: col.key, dir: again ? -sort.dir : col.num ? -1 : 1 };
        order();
      });
    }
    headRow.append(th);
  }

  function fill(td, col, item, fresh) {
    const value = valueOf(col, item);
    td.dataset.value = value == null || typeof value === 'object' ? '' : String(value);
    if (col.render) {
      if (fresh || col.live) td.replaceChildren(col.render(item, value) ?? '');
      return;
    }
    const text = col.format ? col.format(value, item) : value == null || value === '' ? '—' : String(value);
    if (td.textContent !== text) td.textContent = text;
    if (col.tip) td.title = col.tip(item) ?? '';
  }

  function order() {
    for (const th of headRow.children) {
      const active = sort && th.dataset.col === sort.key;
      th.classList.toggle('sorted', !!active);
      th.classList.toggle('desc', !!active && sort.dir < 0);
      th.setAttribute('aria-sort', active ? (sort.dir < 0 ? 'descending' : 'ascending') : 'none');
    }
    let list = current.map((item) => ({ item, key: rowKey(item) }));
    const col = sort && columns.find((c) => c.key === sort.key);
    if (col) {
      list = list
        .map((entry, index) => ({ ...entry, index, v: sortValueOf(col, entry.item) }))
        .sort((a, b) => {
          const x = a.v;
          const y = b.v;
          let c;
          if (x == null && y == null) c = 0;
          else if (x == null) c = 1;
          else if (y == null) c = -1;
          else if (typeof x === 'number' && typeof y === 'number') c = (x - y) * sort.dir;
          else c = String(x).localeCompare(String(y), undefined, { numeric: true, sensitivity: 'base' }) * sort.dir;
          return c || a.index - b.index;
        });
    }
    const wanted = list.map((entry) => rows.get(entry.key).tr);
    const present = [...tbody.children].filter((tr) => tr !== emptyRow);
    if (wanted.length !== present.length || wanted.some((tr, i) => present[i] !== tr)) {
      for (const tr of wanted) tbody.append(tr);
    }
    if (wanted.length === 0) tbody.append(emptyRow);
    else emptyRow.remove();
  }

  function update(items) {
    current = items;
    const seen = new Set();
    for (const item of items) {
      const key = rowKey(item);
      seen.add(key);
      let row = rows.get(key);
      if (!row) {
        const tr = h('tr', { dataset: { key } });
        const cells = columns.map((col) => {
          const td = h('td', { class: col.num ? 'num' : col.class || '', dataset: { col: col.key } });
          fill(td, col, item, true);
          tr.append(td);
          return td;
        });
        row = { tr, cells };
        rows.set(key, row);
      } else {
        columns.forEach((col, i) => fill(row.cells[i], col, item, false));
      }
    }
    for (const [key, row] of rows) {
      if (!seen.has(key)) {
        row.tr.remove();
        rows.delete(key);
      }
    }
    order();
  }

  update([]);
  return { el: h('div', { class: 'table-wrap' }, table), update, table };
}

// ------------------------------------------------------------------------------------------
// Dialogs

function openDialog({ title, body, actions = [], wide = false, test = 'dialog', focus = null }) {
  const dialog = $('#dialog');
  const error = h('p', { class: 'dialog-error', id: 'dialog-error', test: 'dialog-error', hidden: true });
  const close = () => {
    if (dialog.open) dialog.close();
  };
  const footer = h('div', { class: 'dialog-actions' });
  dialog.className = `dialog${wide ? ' wide' : ''}`;
  dialog.dataset.test = test;
  dialog.replaceChildren(
    h(
      'div',
      { class: 'dialog-head' },
      h('h2', { id: 'dialog-title' }, title),
      h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close', onclick: close }, '×'),
    ),
    h('div', { class: 'dialog-body' }, body),
    error,
    footer,
  );
  const controller = {
    dialog,
    close,
    showError(err) {
      error.textContent =
        err instanceof ApiError
          ? `${err.status === 403 ? 'Not allowed' : `Error ${err.status}`}: ${err.reason}`
          : String(err?.message ?? err);
      error.hidden = false;
    },
    clearError() {
      error.hidden = true;
    },
    busy(on) {
      for (const button of footer.querySelectorAll('button')) button.disabled = on;
    },
  };
  for (const action of actions) {
    footer.append(
      h(
        'button',
        {
          type: 'button',
          class: `btn ${action.kind ? `btn-${action.kind}` : ''}`,
          id: action.id,
          test: action.id,
          onclick: async () => {
            if (!action.run) return close();
            controller.clearError();
            controller.busy(true);
            try {
              const keep = await action.run(controller);
              if (!keep) close();
            } catch (err) {
              controller.showError(err);
            } finally {
              controller.busy(false);
            }
          },
        },
        action.label,
      ),
    );
  }
  if (dialog.open) dialog.close();
  dialog.showModal();
  const first = focus ?? dialog.querySelector('input:not([type=radio]):not([type=checkbox]), textarea, select');
  if (first) first.focus();
  // Enter in a text field runs the primary action.
  dialog.onkeydown = (event) => {
    if (event.key === 'Enter' && event.target.matches('input')) {
      event.preventDefault();
      footer.querySelector('.btn-primary, .btn-danger')?.click();
    }
  };
  return controller;
}

function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = true }) {
  return new Promise((resolve) => {
    let answered = false;
    const ctl = openDialog({
      title,
      test: 'confirm-dialog',
      body: h('div', { class: 'confirm-text' }, message),
      actions: [
        { id: 'confirm-cancel', label: 'Cancel' },
        {
          id: 'confirm-ok',
          label: confirmLabel,
          kind: danger ? 'danger' : 'primary',
          run: () => {
            answered = true;
            resolve(true);
          },
        },
      ],
    });
    ctl.dialog.addEventListener('close', () => { if (!answered) resolve(false); }, { once: true });
  });
}

/** An input after a fixed prefix (the tenant of a new namespace, ...). */
function prefixed(prefix, input) {
  return h('div', { class: 'prefixed' }, h('span', { class: 'prefix' }, prefix), input);
}

function field(label, input, hint) {
  return h(
    'label',
    { class: 'field' },
    h('span', { class: 'field-label' }, label),
    input,
    hint ? h('span', { class: 'hint' }, hint) : null,
  );
}

// ------------------------------------------------------------------------------------------
// The cluster this broker belongs to

let clusterPromise = null;

/** This broker's cluster, found once (again after signing in). */
function clusterName() {
  clusterPromise ??= detectCluster();
  return clusterPromise;
}

async function detectCluster() {
  let name = null;
  try {
    const response = await fetch('/metrics', { cache: 'no-store' });
    if (response.ok) {
      const m = /cluster="([^"]+)"/.exec(await response.text());
      if (m) name = m[1];
    }
  } catch {
    // fall back to the admin API
  }
  if (!name) {
    const clusters = await optional(api(`${ADMIN}/clusters`), []);
    if (clusters?.length) name = clusters[0];
  }
  state.cluster = name;
  $('#cluster-name').textContent = name ? `cluster ${name}` : 'cluster ?';
  $('#cluster-name').dataset.cluster = name ?? '';
  return name;
}

// ------------------------------------------------------------------------------------------
// Router

let ctx = null;

function newContext() {
  if (ctx) ctx.dispose();
  const timers = new Set();
  const c = {
    alive: true,
    cleanups: [],
    /** Runs `fn` in `ms` unless the page was left by then. */
    later(fn, ms) {
      const id = setTimeout(() => {
        timers.delete(id);
        if (c.alive) fn();
      }, ms);
      timers.add(id);
    },
    dispose() {
      c.alive = false;
      for (const id of timers) clearTimeout(id);
      for (const fn of c.cleanups) fn();
    },
  };
  ctx = c;
  return c;
}

const ROUTES = [
  [/^#\/overview\/?$/, viewOverview, 'overview'],
  [/^#\/tenants\/?$/, viewTenants, 'tenants'],
  [/^#\/t\/([^/]+)\/?$/, viewTenant, 'tenants'],
  [/^#\/ns\/([^/]+)\/([^/]+)\/?$/, viewNamespace, 'tenants'],
  [/^#\/topic\/persistent\/([^/]+)\/([^/]+)\/([^/]+)\/?$/, viewTopic, 'tenants'],
];

async function route() {
  const hash = location.hash || '#/overview';
  if (hash === '#' || hash === '#/') {
    location.replace('#/overview');
    return;
  }
  const c = newContext();
  const main = view();
  main.replaceChildren();
  if ($('#dialog').open) $('#dialog').close();
  for (const [pattern, render, nav] of ROUTES) {
    const m = pattern.exec(hash);
    if (!m) continue;
    for (const a of document.querySelectorAll('.mainnav a')) a.classList.toggle('active', a.dataset.nav === nav);
    const params = m.slice(1).map((part) => decodeURIComponent(part));
    try {
      await render(c, ...params);
    } catch (error) {
      if (c.alive) main.append(errorBox(error));
    }
    return;
  }
  setCrumbs([{ label: 'Not found' }]);
  main.append(errorBox(new ApiError(404, `No console page at ${hash}`, 'GET', hash)));
}

// ------------------------------------------------------------------------------------------
// Overview: clusters, brokers, bookies, bundles

function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^(pulsar_broker_\w+)\{[^}]*\}\s+(\S+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

async function viewOverview(c) {
  setCrumbs([{ label: 'Overview' }]);
  const main = view();
  const refresh = button('Refresh', '', { id: 'overview-refresh', onclick: () => route() });
  const cluster = await clusterName();
  if (!c.alive) return;
  const subtitle = cluster ? `Cluster ${cluster}, as broker ${location.host} sees it` : null;
  main.append(pageHead('Cluster overview', subtitle, refresh));

  const cardsBox = h('div', { id: 'ov-stats' }, loading());
  const clustersBody = h('div', {}, loading());
  const brokersBody = h('div', {}, loading());
  const bookiesBody = h('div', {}, loading());
  const bundlesBody = h('div', {}, loading());
  main.append(
    cardsBox,
    card('Brokers', { id: 'ov-brokers-card', note: 'live brokers of the cluster' }, brokersBody),
    card('Bookies', { id: 'ov-bookies-card', note: 'storage nodes registered now' }, bookiesBody),
    card('Clusters', { id: 'ov-clusters-card' }, clustersBody),
    card(
      'Namespace bundles',
      { id: 'ov-bundles-card', note: 'hash ranges of each namespace and the broker serving them' },
      bundlesBody,
    ),
  );

  const report = optional(api(`${ADMIN}/broker-stats/load-report`));

  const guard = (body, task) =>
    task().catch((error) => {
      if (c.alive) body.replaceChildren(errorBox(error));
    });

  await Promise.all([
    guard(cardsBox, async () => {
      let metrics = {};
      try {
        const response = await fetch('/metrics', { cache: 'no-store' });
        if (response.ok) metrics = parseMetrics(await response.text());
      } catch {
        // shown as dashes
      }
      if (!c.alive) return;
      const m = (key) => metrics[`pulsar_broker_${key}`];
      cardsBox.replaceChildren(
        statCards([
          { label: 'Topics', value: fmt.count(m('topics_count')), test: 'ov-topics' },
          { label: 'Producers', value: fmt.count(m('producers_count')), test: 'ov-producers' },
          { label: 'Consumers', value: fmt.count(m('consumers_count')), test: 'ov-consumers' },
          {
            label: 'Msg rate in',
            value: fmt.rate(m('rate_in')),
            sub: fmt.throughput(m('throughput_in')),
            test: 'ov-rate-in',
          },
          {
            label: 'Msg rate out',
            value: fmt.rate(m('rate_out')),
            sub: fmt.throughput(m('throughput_out')),
            test: 'ov-rate-out',
          },
          { label: 'Backlog', value: fmt.count(m('msg_backlog')), sub: 'messages', test: 'ov-backlog' },
          { label: 'Storage', value: fmt.bytes(m('storage_size')), test: 'ov-storage' },
        ]),
      );
    }),
    guard(clustersBody, async () => {
      const names = await api(`${ADMIN}/clusters`);
      const infos = await Promise.all(names.map((name) => optional(api(`${ADMIN}/clusters/${enc(name)}`), {})));
      if (!c.alive) return;
      const table = dataTable({
        id: 'ov-clusters',
        rowKey: (row) => row.name,
        columns: [
          {
            key: 'name',
            label: 'Cluster',
            render: (row) =>
              h('span', {}, h('strong', {}, row.name), row.name === cluster ? badge('this broker', 'badge-info') : null),
          },
          { key: 'serviceUrl', label: 'Service URL', class: 'mono' },
          { key: 'brokerServiceUrl', label: 'Broker service URL', class: 'mono' },
        ],
      });
      table.update(names.map((name, i) => ({ name, ...infos[i] })));
      clustersBody.replaceChildren(table.el);
    }),
    guard(brokersBody, async () => {
      if (!cluster) throw new ApiError(404, 'The cluster name is not known', 'GET', `${ADMIN}/brokers/{cluster}`);
      const [brokers, leader, load, health] = await Promise.all([
        api(`${ADMIN}/brokers/${enc(cluster)}`),
        optional(api(`${ADMIN}/brokers/leaderBroker`)),
        report,
        // 503 with the reason when unhealthy; unknown when the role may not ask.
        api(`${ADMIN}/brokers/health`).then(
          () => 'ok',
          (error) =>
            error instanceof ApiError && ![401, 403].includes(error.status) ? error.reason || 'unhealthy' : null,
        ),
      ]);
      if (!c.alive) return;
      const table = dataTable({
        id: 'ov-brokers',
        rowKey: (row) => row.broker,
        sort: { key: 'broker', dir: 1 },
        columns: [
          { key: 'broker', label: 'Broker', class: 'mono' },
          {
            key: 'leader',
            label: 'Role',
            value: (row) => (row.leader ? 'leader' : 'follower'),
            render: (row) =>
              row.leader ? badge('★ leader', 'badge-leader', { test: 'leader' }) : h('span', { class: 'muted' }, 'member'),
          },
          {
            key: 'health',
            label: 'Health',
            render: (row) => {
              if (row.health == null) {
                const why = 'Only the broker serving this console reports its health';
                return h('span', { class: 'muted', title: why }, '—');
              }
              if (row.health === 'ok') return badge('healthy', 'badge-ok');
              return badge('unhealthy', 'badge-bad', { title: row.health });
            },
          },
          { key: 'topics', label: 'Topics', num: true, format: fmt.count },
          { key: 'bundles', label: 'Bundles', num: true, format: fmt.count },
          { key: 'msgRateIn', label: 'Msg rate in', num: true, format: fmt.rate },
          { key: 'cpu', label: 'CPU', num: true, format: fmt.percent },
        ],
      });
      table.update(
        brokers.map((broker) => {
          const mine = load && load.broker === broker;
          return {
            broker,
            leader: leader?.brokerId === broker,
            health: mine ? health : null,
            topics: mine ? load.topics : null,
            bundles: mine ? load.bundles.length : null,
            msgRateIn: mine ? Math.max(0, load.msgRateIn) : null,
            cpu: mine ? load.cpuPercent : null,
          };
        }),
      );
      brokersBody.replaceChildren(table.el);
    }),
    guard(bookiesBody, async () => {
      const answer = await api(`${ADMIN}/bookies/all`);
      if (!c.alive) return;
      const table = dataTable({
        id: 'ov-bookies',
        rowKey: (row) => row.bookieId,
        sort: { key: 'bookieId', dir: 1 },
        empty: 'No bookie is registered.',
        columns: [
          { key: 'bookieId', label: 'Bookie', render: (row) => h('strong', {}, row.bookieId) },
          { key: 'address', label: 'Address', class: 'mono' },
          { key: 'tls', label: 'TLS', format: (v) => (v == null ? '—' : v ? 'yes' : 'no') },
          {
            key: 'state',
            label: 'State',
            value: bookieState,
            render: (row) => {
              const state = bookieState(row);
              if (state == null) return h('span', { class: 'muted' }, '—');
              const kinds = { 'read-write': 'badge-ok', 'read-only': 'badge-warn', unreachable: 'badge-bad' };
              const kind = kinds[state] ?? '';
              return badge(state, kind, { title: row.error ?? null });
            },
          },
          {
            key: 'used',
            label: 'Disk use',
            num: true,
            value: (row) => diskUse(row),
            render: (row) => diskBar(row),
          },
          { key: 'freeSpace', label: 'Free', num: true, format: fmt.bytes },
          { key: 'totalSpace', label: 'Total', num: true, format: fmt.bytes },
        ],
      });
      table.update(answer?.bookies ?? []);
      bookiesBody.replaceChildren(table.el);
    }),
    guard(bundlesBody, async () => {
      const tenants = await api(`${ADMIN}/tenants`);
      const lists = await Promise.all(tenants.map((t) => optional(api(`${ADMIN}/namespaces/${enc(t)}`), [])));
      const namespaces = lists.flat();
      const layouts = await Promise.all(
        namespaces.map((name) => {
          const [t, ns] = name.split('/');
          return optional(api(`${ADMIN}/namespaces/${enc(t)}/${enc(ns)}/bundles`), null);
        }),
      );
      const load = await report;
      if (!c.alive) return;
      const owned = new Map((load?.bundles ?? []).map((b) => [b.bundle, b]));
      const rows = [];
      namespaces.forEach((name, i) => {
        const bounds = layouts[i]?.boundaries ?? [];
        for (let j = 0; j + 1 < bounds.length; j++) {
          const range = `${bounds[j]}_${bounds[j + 1]}`;
          const mine = owned.get(`${name}/${range}`);
          rows.push({
            namespace: name,
            range,
            owner: mine ? load.broker : null,
            topics: mine?.topics,
            producers: mine?.producers,
            consumers: mine?.consumers,
          });
        }
      });
      const table = dataTable({
        id: 'ov-bundles',
        rowKey: (row) => `${row.namespace}/${row.range}`,
        sort: { key: 'namespace', dir: 1 },
        empty: 'No namespace has bundles yet.',
        columns: [
          {
            key: 'namespace',
            label: 'Namespace',
            render: (row) => h('a', { href: nsHref(...row.namespace.split('/')) }, row.namespace),
          },
          { key: 'range', label: 'Bundle', class: 'mono' },
          {
            key: 'owner',
            label: 'Owner broker',
            render: (row) => {
              if (row.owner) return h('span', { class: 'mono' }, row.owner);
              const why = `Not served by ${load?.broker ?? 'this broker'}: no topic used yet, or another broker's`;
              return h('span', { class: 'muted', title: why }, 'unassigned');
            },
          },
          { key: 'topics', label: 'Topics', num: true, format: fmt.count },
          { key: 'producers', label: 'Producers', num: true, format: fmt.count },
          { key: 'consumers', label: 'Consumers', num: true, format: fmt.count },
        ],
      });
      table.update(rows);
      bundlesBody.replaceChildren(table.el);
    }),
  ]);
}

/** `read-write`, `read-only`, `unreachable`, `unknown`, or null when the broker does not say. */
function bookieState(row) {
  if (typeof row.state === 'string' && row.state) return row.state;
  if (typeof row.readOnly === 'boolean') return row.readOnly ? 'read-only' : 'read-write';
  return null;
}

function diskUse(row) {
  if (!Number.isFinite(row.totalSpace) || !Number.isFinite(row.freeSpace) || row.totalSpace <= 0) return null;
  return (row.totalSpace - row.freeSpace) / row.totalSpace;
}

function diskBar(row) {
  const used = diskUse(row);
  if (used == null) return h('span', { class: 'muted' }, '—');
  const pct = Math.min(100, Math.max(0, used * 100));
  const level = pct >= 90 ? 'bad' : pct >= 75 ? 'warn' : 'ok';
  return h(
    'div',
    { class: 'diskbar', title: `${fmt.bytes(row.totalSpace - row.freeSpace)} used of ${fmt.bytes(row.totalSpace)}` },
    h(
      'div',
      { class: 'diskbar-track' },
      h('div', { class: `diskbar-fill ${level}`, style: `width:${pct.toFixed(1)}%` }),
    ),
    h('span', { class: 'diskbar-label' }, fmt.percent(pct)),
  );
}

// ------------------------------------------------------------------------------------------
// Tenants, namespaces and topics: the browsing tree with search

function groupTopics(topics, partitioned) {
  // Partitions of a partitioned topic are listed under it, not as topics of their own.
  const parents = new Set(partitioned);
  const plain = [];
  for (const full of topics) {
    const m = /^(.*)-partition-\d+$/.exec(full);
    if (m && parents.has(m[1])) continue;
    plain.push(full);
  }
  return [
    ...partitioned.map((name) => ({ name, partitioned: true })),
    ...plain.map((name) => ({ name, partitioned: false })),
  ].sort((a, b) => a.name.localeCompare(b.name));
}

async function namespaceTopics(tenant, ns) {
  const [topics, partitioned] = await Promise.all([
    api(`${ADMIN}/persistent/${enc(tenant)}/${enc(ns)}`),
    optional(api(`${ADMIN}/persistent/${enc(tenant)}/${enc(ns)}/partitioned`), []),
  ]);
  return groupTopics(topics ?? [], partitioned ?? []);
}

function highlight(text, query) {
  if (!query) return text;
  const i = text.toLowerCase().indexOf(query.toLowerCase());
  if (i < 0) return text;
  const frag = document.createDocumentFragment();
  frag.append(text.slice(0, i), h('mark', {}, text.slice(i, i + query.length)), text.slice(i + query.length));
  return frag;
}

async function viewTenants(c) {
  setCrumbs([{ label: 'Tenants' }]);
  const main = view();
  const search = h('input', {
    type: 'search',
    id: 'search',
    test: 'search',
    class: 'search',
    placeholder: 'Search tenants, namespaces and topics…  ( / )',
    autocomplete: 'off',
    spellcheck: 'false',
  });
  const newTenant = button('+ New tenant', 'btn-primary', {
    id: 'new-tenant',
    test: 'new-tenant',
    onclick: () => createTenantDialog(),
  });
  main.append(pageHead('Tenants & topics', 'Browse every tenant, namespace and topic; type to filter.', newTenant));
  const summary = h('span', { class: 'muted small', id: 'search-summary', test: 'search-summary' });
  const tree = h('div', { class: 'tree', id: 'tree', test: 'tree' }, loading());
  main.append(card(null, {}, h('div', { class: 'toolbar' }, search, summary), tree));
  search.focus();

  let tenants;
  try {
    tenants = await api(`${ADMIN}/tenants`);
  } catch (error) {
    if (!c.alive) return;
    // A tenant's admin may not list tenants, but may open their own.
    const go = h('input', { id: 'goto-tenant', test: 'goto-tenant', placeholder: 'tenant name' });
    const open = (event) => {
      event.preventDefault();
      if (go.value.trim()) location.hash = tenantHref(go.value.trim());
    };
    setContent(
      tree,
      errorBox(error),
      error.status === 403
        ? h(
            'form',
            { class: 'inline-form', onsubmit: open },
            h('span', {}, 'Listing tenants needs a super-user; open a tenant you administer:'),
            go,
            h('button', { class: 'btn', type: 'submit' }, 'Open'),
          )
        : null,
    );
    return;
  }
  const data = await Promise.all(
    tenants.map(async (tenant) => {
      let namespaces = [];
      let error = null;
      try {
        namespaces = await api(`${ADMIN}/namespaces/${enc(tenant)}`);
      } catch (e) {
        error = e;
      }
      const nsData = await Promise.all(
        namespaces.map(async (full) => {
          const ns = full.split('/')[1];
          try {
            return { ns, topics: await namespaceTopics(tenant, ns) };
          } catch (e) {
            return { ns, topics: [], error: e };
          }
        }),
      );
      return { tenant, namespaces: nsData, error };
    }),
  );
  if (!c.alive) return;

  // Every row of the tree, with the path it matches on.
  const rows = [];
  const list = h('ul', { class: 'tree-list' });
  for (const t of data) {
    const topicCount = t.namespaces.reduce((n, ns) => n + ns.topics.length, 0);
    const tRow = h(
      'li',
      { class: 'tree-row level-0', test: 'tree-tenant', dataset: { name: t.tenant } },
      h('span', { class: 'tree-icon tenant', 'aria-hidden': 'true' }, 'T'),
      h('a', { href: tenantHref(t.tenant), class: 'tree-name' }),
      h('span', { class: 'tree-meta' }, `${plural(t.namespaces.length, 'namespace')} · ${plural(topicCount, 'topic')}`),
      t.error ? h('span', { class: 'tree-error' }, t.error.reason) : null,
    );
    const tenantEntry = { el: tRow, path: t.tenant, label: t.tenant, kind: 'tenant', children: [] };
    rows.push(tenantEntry);
    list.append(tRow);
    for (const ns of t.namespaces) {
      const nRow = h(
        'li',
        { class: 'tree-row level-1', test: 'tree-namespace', dataset: { name: `${t.tenant}/${ns.ns}` } },
        h('span', { class: 'tree-icon namespace', 'aria-hidden': 'true' }, 'N'),
        h('a', { href: nsHref(t.tenant, ns.ns), class: 'tree-name' }),
        h('span', { class: 'tree-meta' }, plural(ns.topics.length, 'topic')),
        ns.error ? h('span', { class: 'tree-error' }, ns.error.reason) : null,
      );
      const path = `${t.tenant}/${ns.ns}`;
      const nsEntry = { el: nRow, path, label: path, kind: 'namespace', children: [] };
      tenantEntry.children.push(nsEntry);
      rows.push(nsEntry);
      list.append(nRow);
      for (const topic of ns.topics) {
        const parts = splitTopic(topic.name);
        const short = parts ? parts.topic : topic.name;
        const row = h(
          'li',
          { class: 'tree-row level-2', test: 'tree-topic', dataset: { name: topic.name } },
          h('span', { class: 'tree-icon topic', 'aria-hidden': 'true' }, '#'),
          h('a', { href: parts ? topicHref(parts.tenant, parts.ns, parts.topic) : '#', class: 'tree-name' }),
          topic.partitioned ? badge('partitioned', 'badge-info') : null,
        );
        const entry = { el: row, path: `${t.tenant}/${ns.ns}/${short}`, label: short, kind: 'topic', children: [] };
        nsEntry.children.push(entry);
        rows.push(entry);
        list.append(row);
      }
    }
  }
  const emptyNote = h('p', { class: 'empty', id: 'search-empty', test: 'search-empty', hidden: true });
  emptyNote.textContent = 'Nothing matches.';
  tree.replaceChildren(list, emptyNote);
  if (!data.length) {
    emptyNote.textContent = 'No tenants yet. Create one.';
    emptyNote.hidden = false;
  }

  const apply = () => {
    const q = search.value.trim().toLowerCase();
    let topics = 0;
    let namespaces = 0;
    let tenantsShown = 0;
    const visit = (entry) => {
      const self = !q || entry.path.toLowerCase().includes(q);
      let child = false;
      for (const c2 of entry.children) child = visit(c2) || child;
      const shown = self || child;
      entry.el.hidden = !shown;
      entry.el.querySelector('.tree-name').replaceChildren(highlight(entry.label, q));
      if (shown) {
        if (entry.kind === 'topic') topics += 1;
        else if (entry.kind === 'namespace') namespaces += 1;
        else tenantsShown += 1;
      }
      return shown;
    };
    for (const entry of rows.filter((r) => r.kind === 'tenant')) visit(entry);
    const counted = [
      plural(tenantsShown, 'tenant'),
      plural(namespaces, 'namespace'),
      plural(topics, 'topic'),
    ].join(' · ');
    summary.textContent = q ? `${counted} match` : counted;
    summary.dataset.topics = String(topics);
    emptyNote.hidden = !(q && tenantsShown === 0);
  };
  search.addEventListener('input', apply);
  apply();
}

async function viewTenant(c, tenant) {
  setCrumbs(crumbsTo(tenant));
  const main = view();
  const newNs = button('+ New namespace', 'btn-primary', {
    id: 'new-namespace',
    test: 'new-namespace',
    onclick: () => createNamespaceDialog(tenant),
  });
  main.append(pageHead(tenant, 'Tenant', newNs));
  const infoBody = h('div', {}, loading());
  const nsBody = h('div', {}, loading());
  const filter = h('input', { type: 'search', class: 'search small', id: 'ns-search', placeholder: 'Filter namespaces…' });
  main.append(
    card('Tenant', { id: 'tenant-info' }, infoBody),
    card('Namespaces', { id: 'namespaces-card', actions: [filter] }, nsBody),
  );

  const [info, namespaces] = await Promise.all([
    api(`${ADMIN}/tenants/${enc(tenant)}`).catch((e) => e),
    api(`${ADMIN}/namespaces/${enc(tenant)}`).catch((e) => e),
  ]);
  if (!c.alive) return;
  if (info instanceof Error) infoBody.replaceChildren(errorBox(info));
  else {
    infoBody.replaceChildren(
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Admin roles'),
        h(
          'dd',
          { test: 'admin-roles' },
          info.adminRoles?.length
            ? info.adminRoles.map((r) => badge(r, 'badge-plain'))
            : h('span', { class: 'muted' }, 'none (super-users only)'),
        ),
        h('dt', {}, 'Allowed clusters'),
        h('dd', { test: 'allowed-clusters' }, (info.allowedClusters ?? []).map((r) => badge(r, 'badge-plain'))),
      ),
    );
  }
  if (namespaces instanceof Error) {
    nsBody.replaceChildren(errorBox(namespaces));
    return;
  }
  const table = dataTable({
    id: 'namespaces-table',
    rowKey: (row) => row.ns,
    sort: { key: 'ns', dir: 1 },
    empty: 'No namespaces yet.',
    columns: [
      {
        key: 'ns',
        label: 'Namespace',
        render: (row) => h('a', { href: nsHref(tenant, row.ns), class: 'strong-link' }, `${tenant}/${row.ns}`),
      },
      { key: 'bundles', label: 'Bundles', num: true, format: fmt.count },
      { key: 'topics', label: 'Topics', num: true, format: fmt.count },
      {
        key: 'clusters',
        label: 'Replication clusters',
        format: (v) => (v?.length ? v.join(', ') : '—'),
        sort: (row) => (row.clusters ?? []).join(','),
      },
    ],
  });
  const rows = namespaces.map((full) => ({ ns: full.split('/')[1] }));
  table.update(rows);
  nsBody.replaceChildren(table.el);
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    table.update(rows.filter((row) => !q || `${tenant}/${row.ns}`.toLowerCase().includes(q)));
  });
  await Promise.all(
    rows.map(async (row) => {
      const [policies, topics] = await Promise.all([
        optional(api(`${ADMIN}/namespaces/${enc(tenant)}/${enc(row.ns)}`)),
        optional(namespaceTopics(tenant, row.ns)),
      ]);
      row.bundles = policies?.bundles?.numBundles ?? null;
      row.clusters = policies?.replication_clusters ?? null;
      row.topics = topics ? topics.length : null;
    }),
  );
  if (!c.alive) return;
  filter.dispatchEvent(new Event('input'));
}

function topicSummary(stats) {
  const subs = Object.values(stats?.subscriptions ?? {});
  return {
    rateIn: stats?.msgRateIn ?? 0,
    rateOut: stats?.msgRateOut ?? 0,
    throughputIn: stats?.msgThroughputIn ?? 0,
    throughputOut: stats?.msgThroughputOut ?? 0,
    storage: stats?.storageSize ?? 0,
    backlog: subs.reduce((n, s) => n + (s.msgBacklog ?? 0), 0),
    backlogSize: stats?.backlogSize ?? 0,
    producers: (stats?.publishers ?? []).length,
    subscriptions: subs.length,
    consumers: subs.reduce((n, s) => n + (s.consumers ?? []).length, 0),
  };
}

async function viewNamespace(c, tenant, ns) {
  setCrumbs(crumbsTo(tenant, ns));
  const main = view();
  const newTopic = button('+ New topic', 'btn-primary', {
    id: 'new-topic',
    test: 'new-topic',
    onclick: () => createTopicDialog(tenant, ns),
  });
  main.append(pageHead(`${tenant}/${ns}`, 'Namespace', newTopic));
  const filter = h('input', { type: 'search', class: 'search small', id: 'topic-search', placeholder: 'Filter topics…' });
  const infoBody = h('div', {}, loading());
  const body = h('div', {}, loading());
  main.append(
    card('Namespace', { id: 'ns-info' }, infoBody),
    card('Topics', { id: 'topics-card', actions: [filter] }, body),
  );

  const [policies, topics] = await Promise.all([
    api(`${ADMIN}/namespaces/${enc(tenant)}/${enc(ns)}`).catch((e) => e),
    namespaceTopics(tenant, ns).catch((e) => e),
  ]);
  if (!c.alive) return;
  if (policies instanceof Error) infoBody.replaceChildren(errorBox(policies));
  else {
    const bounds = policies.bundles?.boundaries ?? [];
    const grants = Object.entries(policies.auth_policies?.namespace_auth ?? {});
    infoBody.replaceChildren(
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Bundles'),
        h(
          'dd',
          {},
          String(policies.bundles?.numBundles ?? '—'),
          bounds.length ? h('span', { class: 'muted small mono' }, `  ${bounds.join(' · ')}`) : null,
        ),
        h('dt', {}, 'Replication clusters'),
        h('dd', {}, (policies.replication_clusters ?? []).map((r) => badge(r, 'badge-plain'))),
        h('dt', {}, 'Permissions'),
        h(
          'dd',
          {},
          grants.length
            ? grants.map(([role, actions]) => badge(`${role}: ${actions.join(', ')}`, 'badge-plain'))
            : h('span', { class: 'muted' }, 'none granted'),
        ),
      ),
    );
  }
  if (topics instanceof Error) {
    body.replaceChildren(errorBox(topics));
    return;
  }
  const table = dataTable({
    id: 'topics-table',
    rowKey: (row) => row.name,
    sort: { key: 'short', dir: 1 },
    empty: 'No topics yet.',
    columns: [
      {
        key: 'short',
        label: 'Topic',
        live: true,
        render: (row) =>
          h(
            'span',
            {},
            h('a', { href: topicHref(tenant, ns, row.short), class: 'strong-link' }, row.short),
            row.partitioned ? badge(`${row.partitions ?? '?'} partitions`, 'badge-info') : null,
          ),
      },
      { key: 'producers', label: 'Producers', num: true, format: fmt.count },
      { key: 'subscriptions', label: 'Subscriptions', num: true, format: fmt.count },
      { key: 'rateIn', label: 'Rate in', num: true, format: fmt.rate },
      { key: 'rateOut', label: 'Rate out', num: true, format: fmt.rate },
      { key: 'backlog', label: 'Backlog', num: true, format: fmt.count },
      { key: 'storage', label: 'Storage', num: true, format: fmt.bytes },
    ],
  });
  const rows = topics.map((t) => ({ ...t, short: splitTopic(t.name)?.topic ?? t.name }));
  const show = () => {
    const q = filter.value.trim().toLowerCase();
    table.update(rows.filter((row) => !q || row.name.toLowerCase().includes(q)));
  };
  filter.addEventListener('input', show);
  show();
  body.replaceChildren(table.el);
  // Stats of the first 200 topics (each is one admin call).
  await Promise.all(
    rows.slice(0, 200).map(async (row) => {
      const base = topicBase(tenant, ns, row.short);
      const stats = row.partitioned
        ? await optional(api(`${base}/partitioned-stats?perPartition=false`))
        : await optional(api(`${base}/stats`));
      if (row.partitioned) row.partitions = stats?.metadata?.partitions ?? null;
      Object.assign(row, stats ? topicSummary(stats) : {});
    }),
  );
  if (!c.alive) return;
  show();
}

// ------------------------------------------------------------------------------------------
// A topic: stats, live charts, publishers, subscriptions, consumers, actions

async function viewTopic(c, tenant, ns, topic) {
  const full = `persistent://${tenant}/${ns}/${topic}`;
  const base = topicBase(tenant, ns, topic);
  const partitionOf = /^(.*)-partition-(\d+)$/.exec(topic);
  const crumbs = crumbsTo(tenant, ns);
  if (partitionOf) crumbs.push({ label: partitionOf[1], href: topicHref(tenant, ns, partitionOf[1]) });
  crumbs.push({ label: partitionOf ? `partition ${partitionOf[2]}` : topic });
  setCrumbs(crumbs);
  const main = view();
  main.append(loading());

  const meta = await optional(api(`${base}/partitions`), { partitions: 0 });
  const partitions = meta?.partitions ?? 0;
  const partitioned = partitions > 0;
  const statsPath = partitioned ? `${base}/partitioned-stats?perPartition=true` : `${base}/stats`;
  const first = await api(statsPath);
  if (!c.alive) return;

  const topicCtx = { tenant, ns, topic, base, partitioned, partitions, refresh: null };
  let live = true;
  const liveButton = button([h('span', { class: 'live-dot' }), 'Live'], '', {
    id: 'live-toggle',
    test: 'live-toggle',
    'aria-pressed': 'true',
    title: 'Refresh every 2 s, or pause',
  });
  liveButton.addEventListener('click', () => {
    live = !live;
    liveButton.setAttribute('aria-pressed', String(live));
    liveButton.classList.toggle('paused', !live);
    liveButton.lastChild.textContent = live ? 'Live' : 'Paused';
    if (live) poll();
  });
  const kind = partitioned
    ? badge(`partitioned · ${partitions} partitions`, 'badge-info', { test: 'partitioned-badge' })
    : badge('persistent', 'badge-plain');
  main.replaceChildren(pageHead(h('span', {}, topic, ' ', kind), { mono: full }, liveButton));

  const stats = statCards([
    { label: 'Msg rate in', value: '—', test: 'stat-rate-in', sub: '—' },
    { label: 'Msg rate out', value: '—', test: 'stat-rate-out', sub: '—' },
    { label: 'Producers', value: '—', test: 'stat-producers' },
    { label: 'Subscriptions', value: '—', test: 'stat-subscriptions', sub: '—' },
    { label: 'Backlog', value: '—', test: 'stat-backlog', sub: '—' },
    { label: 'Storage size', value: '—', test: 'stat-storage', sub: '—' },
  ]);
  main.append(stats);

  const rateChart = new LiveChart({
    id: 'chart-rates',
    title: 'Message rate',
    format: fmt.compact,
    series: [
      { key: 'in', label: 'in (msg/s)' },
      { key: 'out', label: 'out (msg/s)' },
    ],
  });
  const backlogChart = new LiveChart({
    id: 'chart-backlog',
    title: 'Backlog (messages)',
    format: fmt.compact,
    integer: true,
    series: [{ key: 'total', label: 'total' }],
  });
  c.cleanups.push(() => {
    rateChart.dispose();
    backlogChart.dispose();
  });
  main.append(h('div', { class: 'grid-2 charts' }, rateChart.el, backlogChart.el));

  let partitionTable = null;
  if (partitioned) {
    partitionTable = dataTable({
      id: 'partitions-table',
      rowKey: (row) => row.name,
      sort: { key: 'index', dir: 1 },
      columns: [
        {
          key: 'index',
          label: 'Partition',
          render: (row) => {
            const name = `${topic}-partition-${row.index}`;
            return h('a', { href: topicHref(tenant, ns, name) }, name);
          },
        },
        { key: 'producers', label: 'Producers', num: true, format: fmt.count },
        { key: 'subscriptions', label: 'Subscriptions', num: true, format: fmt.count },
        { key: 'rateIn', label: 'Rate in', num: true, format: fmt.rate },
        { key: 'rateOut', label: 'Rate out', num: true, format: fmt.rate },
        { key: 'throughputIn', label: 'Throughput in', num: true, format: fmt.throughput },
        { key: 'backlog', label: 'Backlog', num: true, format: fmt.count },
        { key: 'storage', label: 'Storage', num: true, format: fmt.bytes },
      ],
    });
    main.append(card('Partitions', { id: 'partitions-card' }, partitionTable.el));
  }

  const publishers = dataTable({
    id: 'publishers-table',
    rowKey: (row) => row.key,
    sort: { key: 'producerName', dir: 1 },
    empty: 'No producer is connected.',
    columns: [
      { key: 'producerName', label: 'Producer', class: 'mono' },
      { key: 'producerId', label: 'ID', num: true },
      { key: 'accessMode', label: 'Access' },
      { key: 'address', label: 'Address', class: 'mono' },
      { key: 'msgRateIn', label: 'Rate in', num: true, format: fmt.rate },
      { key: 'msgThroughputIn', label: 'Throughput', num: true, format: fmt.throughput },
      { key: 'averageMsgSize', label: 'Avg size', num: true, format: fmt.bytes },
      { key: 'msgInCounter', label: 'Messages', num: true, format: fmt.count },
      { key: 'connectedSince', label: 'Connected', format: fmt.ago, tip: (row) => row.connectedSince },
    ],
  });
  const subscriptions = dataTable({
    id: 'subscriptions-table',
    rowKey: (row) => row.name,
    sort: { key: 'name', dir: 1 },
    empty: 'No subscriptions.',
    columns: [
      { key: 'name', label: 'Subscription', render: (row) => h('strong', {}, row.name) },
      {
        key: 'type',
        label: 'Type',
        live: true,
        render: (row) => badge(row.type ?? '—', `badge-type type-${(row.type ?? 'none').toLowerCase()}`),
      },
      { key: 'msgBacklog', label: 'Backlog', num: true, format: fmt.count },
      { key: 'backlogSize', label: 'Size', num: true, format: fmt.bytes },
      { key: 'unackedMessages', label: 'Unacked', num: true, format: fmt.count },
      { key: 'msgRateOut', label: 'Rate out', num: true, format: fmt.rate },
      { key: 'consumerCount', label: 'Consumers', num: true, format: fmt.count },
      {
        key: 'markDeletePosition',
        label: 'Acked up to',
        class: 'mono',
        title: 'The mark-delete position: every message up to it is acknowledged',
      },
      {
        key: 'actions',
        label: '',
        sortable: false,
        class: 'actions',
        render: (row) =>
          h(
            'div',
            { class: 'row-actions' },
            button('Peek', 'btn-small', {
              test: 'peek',
              dataset: { sub: row.name },
              title: 'Read the next messages without acknowledging them',
              onclick: () => peekDialog(topicCtx, row.name),
            }),
            button('Reset cursor', 'btn-small', {
              test: 'reset',
              dataset: { sub: row.name },
              title: 'Move the cursor to a time or a message',
              onclick: () => resetDialog(topicCtx, row.name),
            }),
            button('Clear backlog', 'btn-small btn-danger-soft', {
              test: 'clear',
              dataset: { sub: row.name },
              title: 'Skip every unacknowledged message',
              onclick: () => clearBacklog(topicCtx, row.name),
            }),
          ),
      },
    ],
  });
  const consumers = dataTable({
    id: 'consumers-table',
    rowKey: (row) => row.key,
    sort: { key: 'subscription', dir: 1 },
    empty: 'No consumer is connected.',
    columns: [
      { key: 'subscription', label: 'Subscription' },
      { key: 'consumerName', label: 'Consumer', class: 'mono' },
      { key: 'address', label: 'Address', class: 'mono' },
      { key: 'msgRateOut', label: 'Rate out', num: true, format: fmt.rate },
      { key: 'msgThroughputOut', label: 'Throughput', num: true, format: fmt.throughput },
      { key: 'unackedMessages', label: 'Unacked', num: true, format: fmt.count },
      { key: 'availablePermits', label: 'Permits', num: true, format: fmt.count },
      { key: 'msgOutCounter', label: 'Delivered', num: true, format: fmt.count },
      { key: 'connectedSince', label: 'Connected', format: fmt.ago, tip: (row) => row.connectedSince },
    ],
  });
  main.append(
    card('Subscriptions', { id: 'subscriptions-card' }, subscriptions.el),
    card('Publishers', { id: 'publishers-card' }, publishers.el),
    card('Consumers', { id: 'consumers-card', note: 'of every subscription' }, consumers.el),
  );
  const status = h('p', { class: 'muted small poll-status', id: 'poll-status', test: 'poll-status' });
  main.append(status);

  const apply = (s) => {
    const sum = topicSummary(s);
    updateStat(stats, 'stat-rate-in', fmt.rate(sum.rateIn), sum.rateIn, fmt.throughput(sum.throughputIn));
    updateStat(stats, 'stat-rate-out', fmt.rate(sum.rateOut), sum.rateOut, fmt.throughput(sum.throughputOut));
    updateStat(stats, 'stat-producers', fmt.count(sum.producers), sum.producers);
    const consumerCount = plural(sum.consumers, 'consumer');
    updateStat(stats, 'stat-subscriptions', fmt.count(sum.subscriptions), sum.subscriptions, consumerCount);
    updateStat(stats, 'stat-backlog', fmt.count(sum.backlog), sum.backlog, fmt.bytes(sum.backlogSize));
    const ledgers = plural(s.ledgerCount ?? 0, 'ledger');
    const where = partitioned
      ? `${plural(partitions, 'partition')} · ${ledgers}`
      : `${ledgers} · last ${s.lastConfirmedEntry ?? '—'}`;
    updateStat(stats, 'stat-storage', fmt.bytes(sum.storage), sum.storage, where);

    const seen = new Map();
    publishers.update(
      (s.publishers ?? []).map((p) => {
        const name = p.producerName ?? `#${p.producerId}`;
        const n = (seen.get(name) ?? 0) + 1;
        seen.set(name, n);
        return { ...p, key: n > 1 ? `${name}#${n}` : name };
      }),
    );
    const subs = Object.entries(s.subscriptions ?? {}).map(([name, sub]) => ({
      ...sub,
      name,
      consumerCount: (sub.consumers ?? []).length,
      // Each partition has its own cursor: no one position to show for the topic.
      markDeletePosition: partitioned ? null : sub.markDeletePosition,
    }));
    subscriptions.update(subs);
    const cons = [];
    for (const sub of subs) {
      const names = new Map();
      for (const consumer of sub.consumers ?? []) {
        const name = consumer.consumerName ?? '?';
        const n = (names.get(name) ?? 0) + 1;
        names.set(name, n);
        cons.push({ ...consumer, subscription: sub.name, key: `${sub.name}/${name}${n > 1 ? `#${n}` : ''}` });
      }
    }
    consumers.update(cons);
    if (partitionTable) {
      partitionTable.update(
        Object.entries(s.partitions ?? {}).map(([name, ps]) => ({
          name,
          index: Number(/-partition-(\d+)$/.exec(name)?.[1] ?? 0),
          ...topicSummary(ps),
        })),
      );
    }
    const now = Date.now();
    rateChart.push(now, { in: sum.rateIn, out: sum.rateOut });
    // The total, and the five subscriptions with the most backlog.
    const top = [...subs]
      .sort((a, b) => (b.msgBacklog ?? 0) - (a.msgBacklog ?? 0) || a.name.localeCompare(b.name))
      .slice(0, 5)
      .sort((a, b) => a.name.localeCompare(b.name));
    backlogChart.setSeries([
      { key: 'total', label: 'total' },
      ...top.map((sub) => ({ key: `sub:${sub.name}`, label: sub.name })),
    ]);
    const values = { total: sum.backlog };
    for (const sub of subs) values[`sub:${sub.name}`] = sub.msgBacklog ?? 0;
    backlogChart.push(now, values);
    status.textContent = `Updated ${new Date(now).toLocaleTimeString()} · refreshing every ${POLL_MS / 1000} s`;
    status.classList.remove('stale');
  };

  let inFlight = false;
  async function poll() {
    if (!c.alive || inFlight) return;
    inFlight = true;
    try {
      apply(await api(statsPath));
    } catch (error) {
      if (c.alive) {
        status.textContent = `Last refresh failed: ${error.reason ?? error.message}`;
        status.classList.add('stale');
      }
    } finally {
      inFlight = false;
    }
  }
  topicCtx.refresh = poll;
  const loop = () => {
    if (!c.alive) return;
    if (live && !document.hidden) poll();
    c.later(loop, POLL_MS);
  };
  apply(first);
  c.later(loop, POLL_MS);
}

/** The topic paths a subscription action runs on: the topic, or each of its partitions. */
function targets(topicCtx) {
  if (!topicCtx.partitioned) return [{ base: topicCtx.base, partition: null }];
  return Array.from({ length: topicCtx.partitions }, (_, i) => ({
    base: topicBase(topicCtx.tenant, topicCtx.ns, `${topicCtx.topic}-partition-${i}`),
    partition: i,
  }));
}

/** Runs `call` on each target; partitions a subscription never reached (404) are skipped. */
async function onEachTarget(topicCtx, call) {
  const list = targets(topicCtx);
  let done = 0;
  let lastMissing = null;
  for (const target of list) {
    try {
      await call(target);
      done += 1;
    } catch (error) {
      if (list.length > 1 && error instanceof ApiError && error.status === 404) lastMissing = error;
      else throw error;
    }
  }
  if (!done && lastMissing) throw lastMissing;
}

async function clearBacklog(topicCtx, sub) {
  const ok = await confirmDialog({
    title: 'Clear backlog?',
    message: h(
      'p',
      {},
      'Every unacknowledged message of subscription ',
      h('strong', {}, sub),
      ' on ',
      h('code', {}, topicCtx.topic),
      ' will be skipped (acknowledged). Its consumers will not receive them. This cannot be undone.',
    ),
    confirmLabel: 'Clear backlog',
  });
  if (!ok) return;
  try {
    await onEachTarget(topicCtx, (t) => api(`${t.base}/subscription/${enc(sub)}/skip_all`, { method: 'POST' }));
    toast(`Cleared the backlog of ${sub}`);
  } catch (error) {
    toast(`Could not clear the backlog of ${sub}: ${error.reason ?? error.message}`, 'error');
  }
  topicCtx.refresh?.();
}

function resetDialog(topicCtx, sub, presetId = null) {
  const idShape = topicCtx.partitioned ? 'ledger:entry:partition' : 'ledger:entry';
  const idExample = topicCtx.partitioned ? '12:0:1' : '12:0';
  const radio = (id, checked) => h('input', { type: 'radio', name: 'reset-mode', id, checked });
  const byTime = radio('reset-mode-time', !presetId);
  const byId = radio('reset-mode-id', !!presetId);
  const minutes = h('input', { type: 'number', id: 'reset-minutes', min: '0', step: '1', value: '10', class: 'narrow' });
  const messageId = h('input', {
    type: 'text',
    id: 'reset-msgid',
    placeholder: `${idShape}  e.g. ${idExample}`,
    value: presetId ?? '',
    class: 'mono',
  });
  minutes.addEventListener('focus', () => { byTime.checked = true; });
  messageId.addEventListener('focus', () => { byId.checked = true; });
  const body = h(
    'div',
    { class: 'form' },
    h(
      'p',
      {},
      'Move the cursor of subscription ',
      h('strong', {}, sub),
      '. Messages after the new position are delivered again; ',
      'connected consumers are disconnected and reconnect there.',
    ),
    h('label', { class: 'choice' }, byTime, h('span', {}, 'To a time: '), minutes, h('span', {}, ' minutes ago')),
    h('label', { class: 'choice' }, byId, h('span', {}, 'To a message id: '), messageId),
    h('p', { class: 'hint' }, `A message id as the peek shows it (${idShape}); `, h('code', {}, '-1:-1'), ' is the start.'),
  );
  openDialog({
    title: 'Reset cursor',
    test: 'reset-dialog',
    focus: presetId ? messageId : minutes,
    body,
    actions: [
      { id: 'reset-cancel', label: 'Cancel' },
      {
        id: 'reset-go',
        label: 'Reset cursor',
        kind: 'danger',
        run: async () => {
          let what;
          if (byTime.checked) {
            const m = Number(minutes.value);
            if (!Number.isFinite(m) || m < 0) throw new Error('Minutes must be a number ≥ 0');
            const ts = Date.now() - Math.round(m * 60_000);
            await onEachTarget(topicCtx, (t) =>
              api(`${t.base}/subscription/${enc(sub)}/resetcursor/${ts}`, { method: 'POST' }),
            );
            what = `${m} minute${m === 1 ? '' : 's'} ago`;
          } else {
            const m = /^\s*(-?\d+)\s*:\s*(-?\d+)(?:\s*:\s*(-?\d+))?\s*$/.exec(messageId.value);
            if (!m) throw new Error(`A message id looks like ${idShape} (for example ${idExample})`);
            const partitionIndex = m[3] != null ? Number(m[3]) : -1;
            const id = { ledgerId: Number(m[1]), entryId: Number(m[2]), partitionIndex };
            const start = id.ledgerId < 0 || id.entryId < 0;
            const partitionKnown = id.partitionIndex >= 0 && id.partitionIndex < topicCtx.partitions;
            if (topicCtx.partitioned && !start && !partitionKnown) {
              const last = topicCtx.partitions - 1;
              throw new Error(`On a partitioned topic a message id names its partition (0 to ${last}): ${idShape}`);
            }
            // -1:-1 moves every partition to its start; an id, only its own partition.
            const onlyPartition = topicCtx.partitioned && !start ? id.partitionIndex : null;
            await onEachTarget(topicCtx, async (t) => {
              if (onlyPartition != null && t.partition !== onlyPartition) return;
              await api(`${t.base}/subscription/${enc(sub)}/resetcursor`, { method: 'POST', body: id });
            });
            what = `message ${m[1]}:${m[2]}`;
          }
          toast(`Reset ${sub} to ${what}`);
          topicCtx.refresh?.();
        },
      },
    ],
  });
}

function decodePayload(bytes) {
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    // Text unless it has control characters other than tab and newlines.
    if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) return null;
    return text;
  } catch {
    return null;
  }
}

function hexDump(bytes, limit = 4096) {
  const lines = [];
  const n = Math.min(bytes.length, limit);
  for (let offset = 0; offset < n; offset += 16) {
    const chunk = bytes.subarray(offset, Math.min(offset + 16, n));
    const hex = [...chunk].map((b) => b.toString(16).padStart(2, '0'));
    const left = hex.slice(0, 8).join(' ');
    const right = hex.slice(8).join(' ');
    const ascii = [...chunk].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '·')).join('');
    lines.push(`${offset.toString(16).padStart(8, '0')}  ${left.padEnd(23)}  ${right.padEnd(23)}  ${ascii}`);
  }
  if (bytes.length > limit) lines.push(`… ${bytes.length - limit} more bytes`);
  return lines.join('\n');
}

async function readMessage(response, position, partition) {
  const headers = response.headers;
  const properties = [];
  for (const [name, value] of headers) {
    const prefix = 'x-pulsar-property-';
    if (name.toLowerCase().startsWith(prefix)) properties.push([name.slice(prefix.length), value]);
  }
  return {
    position,
    partition,
    id: headers.get('x-pulsar-message-id'),
    publishTime: headers.get('x-pulsar-publish-time'),
    eventTime: headers.get('x-pulsar-event-time'),
    producer: headers.get('x-pulsar-producer-name'),
    sequence: headers.get('x-pulsar-sequence-id'),
    key: headers.get('x-pulsar-partition-key'),
    batch: headers.get('x-pulsar-num-batch-message'),
    compression: headers.get('x-pulsar-compression'),
    properties,
    bytes: new Uint8Array(await response.arrayBuffer()),
  };
}

/** One header field of a peeked message: a muted label and its value. */
function messageField(label, value, attrs = {}) {
  return h('span', { class: 'msg-field', ...attrs }, h('span', { class: 'muted' }, `${label} `), value);
}

function messageCard(message, index, onReset) {
  const text = message.compression ? null : decodePayload(message.bytes);
  const pre = h('pre', { class: 'payload', test: 'payload' });
  const asText = h('button', { type: 'button', class: 'seg', test: 'as-text', disabled: text == null }, 'Text');
  const asHex = h('button', { type: 'button', class: 'seg', test: 'as-hex' }, 'Hex');
  const show = (mode) => {
    pre.textContent = mode === 'text' ? text : hexDump(message.bytes);
    pre.dataset.mode = mode;
    asText.classList.toggle('on', mode === 'text');
    asHex.classList.toggle('on', mode === 'hex');
  };
  asText.addEventListener('click', () => show('text'));
  asHex.addEventListener('click', () => show('hex'));
  show(text != null ? 'text' : 'hex');
  const id = message.partition != null && message.id ? `${message.id}:${message.partition}` : message.id;
  return h(
    'article',
    { class: 'message', test: 'peek-message', dataset: { id: id ?? '', position: message.position } },
    h(
      'header',
      { class: 'message-head' },
      h('span', { class: 'msg-index' }, `#${index + 1}`),
      messageField('id', h('code', { class: 'msg-id', test: 'msg-id' }, id ?? '—')),
      messageField('published', fmt.time(message.publishTime), { test: 'msg-time' }),
      message.producer ? messageField('by', message.producer) : null,
      message.key ? messageField('key', h('code', {}, message.key)) : null,
      message.batch ? badge(`batch of ${message.batch}`, 'badge-info') : null,
      message.compression ? badge(message.compression.toLowerCase(), 'badge-warn') : null,
      h('span', { class: 'spacer' }),
      h('span', { class: 'muted small' }, fmt.bytes(message.bytes.length)),
      h('div', { class: 'segmented' }, asText, asHex),
      id
        ? button('Reset here', 'btn-small btn-link', {
            test: 'reset-here',
            title: 'Reset the cursor to this message',
            onclick: () => onReset(id),
          })
        : null,
    ),
    message.properties.length
      ? h(
          'div',
          { class: 'props', test: 'msg-props' },
          message.properties.map(([k, v]) =>
            h('span', { class: 'prop' }, h('span', { class: 'prop-k' }, k), h('span', { class: 'prop-v' }, v)),
          ),
        )
      : null,
    pre,
  );
}

function peekDialog(topicCtx, sub) {
  const count = h('input', { type: 'number', id: 'peek-count', min: '1', max: '100', value: '10', class: 'narrow' });
  const results = h('div', { class: 'peek-results', id: 'peek-results', test: 'peek-results' });
  const go = h('button', { type: 'button', class: 'btn btn-primary', id: 'peek-go', test: 'peek-go' }, 'Peek');
  const body = h(
    'div',
    {},
    h(
      'div',
      { class: 'toolbar' },
      h('span', {}, 'Subscription ', h('strong', {}, sub), ' · the next'),
      count,
      h('span', {}, 'unacknowledged messages'),
      go,
    ),
    results,
  );
  const ctl = openDialog({
    title: `Peek · ${topicCtx.topic}`,
    test: 'peek-dialog',
    body,
    wide: true,
    actions: [{ id: 'peek-close', label: 'Close' }],
  });
  const run = async () => {
    const n = Math.max(1, Math.min(100, Math.floor(Number(count.value) || 1)));
    results.replaceChildren(loading('Reading messages…'));
    results.dataset.state = 'loading';
    go.disabled = true;
    try {
      const messages = [];
      for (const target of targets(topicCtx)) {
        // Positions 1..n of this topic (or partition), a few at a time, up to the first gap.
        for (let start = 1; start <= n && messages.length < n; start += 10) {
          const wanted = [];
          for (let p = start; p < start + 10 && p <= n; p++) wanted.push(p);
          const got = await Promise.all(
            wanted.map((p) =>
              api(`${target.base}/subscription/${enc(sub)}/position/${p}`, { raw: true })
                .then((response) => readMessage(response, p, target.partition))
                .catch((error) => {
                  if (error instanceof ApiError && error.status === 404) return null;
                  throw error;
                }),
            ),
          );
          let ended = false;
          for (const message of got) {
            if (!message) {
              ended = true;
              break;
            }
            if (messages.length < n) messages.push(message);
          }
          if (ended) break;
        }
        if (messages.length >= n) break;
      }
      results.replaceChildren(
        messages.length
          ? h('p', { class: 'muted small', test: 'peek-summary' }, plural(messages.length, 'message'))
          : h('p', { class: 'empty', test: 'peek-empty' }, 'No unacknowledged messages: the backlog is empty.'),
        ...messages.map((message, i) =>
          messageCard(message, i, (id) => {
            ctl.close();
            resetDialog(topicCtx, sub, id);
          }),
        ),
      );
      results.dataset.state = 'done';
    } catch (error) {
      results.replaceChildren(errorBox(error));
      results.dataset.state = 'error';
    } finally {
      go.disabled = false;
    }
  };
  go.addEventListener('click', run);
  count.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      event.stopPropagation();
      run();
    }
  });
  run();
}

// ------------------------------------------------------------------------------------------
// Create a tenant, a namespace, a topic

const NAME_RE = /^[-=:.\w]+$/;

function checkName(name, what) {
  if (!name) throw new Error(`The ${what} needs a name`);
  if (!NAME_RE.test(name)) throw new Error(`A ${what} name may hold letters, digits and - _ = : . only`);
}

async function createTenantDialog() {
  const name = h('input', { type: 'text', id: 'tenant-name', placeholder: 'e.g. acme', autocomplete: 'off' });
  const roles = h('input', { type: 'text', id: 'tenant-roles', placeholder: 'comma separated, e.g. acme-admin' });
  const clusterBox = h('div', { class: 'checks', id: 'tenant-clusters', test: 'tenant-clusters' }, loading());
  openDialog({
    title: 'New tenant',
    test: 'tenant-dialog',
    body: h(
      'div',
      { class: 'form' },
      field('Name', name),
      field('Admin roles', roles, 'Roles that administer this tenant (super-users always can).'),
      field('Allowed clusters', clusterBox),
    ),
    actions: [
      { id: 'dialog-cancel', label: 'Cancel' },
      {
        id: 'dialog-submit',
        label: 'Create tenant',
        kind: 'primary',
        run: async () => {
          const tenant = name.value.trim();
          checkName(tenant, 'tenant');
          const allowedClusters = [...clusterBox.querySelectorAll('input:checked')].map((i) => i.value);
          const adminRoles = roles.value.split(',').map((r) => r.trim()).filter(Boolean);
          await api(`${ADMIN}/tenants/${enc(tenant)}`, { method: 'PUT', body: { adminRoles, allowedClusters } });
          toast(`Created tenant ${tenant}`);
          if (location.hash === '#/tenants') route();
          else location.hash = '#/tenants';
        },
      },
    ],
  });
  const clusters = await optional(api(`${ADMIN}/clusters`), null);
  const names = clusters?.length ? clusters : state.cluster ? [state.cluster] : [];
  clusterBox.replaceChildren(
    ...names.map((c) => {
      const checked = c === state.cluster || names.length === 1;
      return h('label', { class: 'check' }, h('input', { type: 'checkbox', value: c, checked, dataset: { cluster: c } }), c);
    }),
  );
  if (!names.length) clusterBox.replaceChildren(h('span', { class: 'muted' }, 'No cluster is known.'));
}

function createNamespaceDialog(tenant) {
  const name = h('input', { type: 'text', id: 'ns-name', placeholder: 'e.g. orders', autocomplete: 'off' });
  const bundles = h('input', { type: 'number', id: 'ns-bundles', min: '1', placeholder: 'default', class: 'narrow' });
  openDialog({
    title: `New namespace in ${tenant}`,
    test: 'namespace-dialog',
    body: h(
      'div',
      { class: 'form' },
      field('Name', prefixed(`${tenant}/`, name)),
      field('Bundles', bundles, 'How many hash ranges the namespace is split into; empty for the broker’s default.'),
    ),
    actions: [
      { id: 'dialog-cancel', label: 'Cancel' },
      {
        id: 'dialog-submit',
        label: 'Create namespace',
        kind: 'primary',
        run: async () => {
          const ns = name.value.trim();
          checkName(ns, 'namespace');
          const count = bundles.value.trim() ? Number(bundles.value) : null;
          if (count != null && !(Number.isInteger(count) && count >= 1)) {
            throw new Error('Bundles must be a whole number ≥ 1');
          }
          const body = count ? { bundles: { numBundles: count } } : {};
          await api(`${ADMIN}/namespaces/${enc(tenant)}/${enc(ns)}`, { method: 'PUT', body });
          toast(`Created namespace ${tenant}/${ns}`);
          location.hash = nsHref(tenant, ns);
        },
      },
    ],
  });
}

function createTopicDialog(tenant, ns) {
  const name = h('input', { type: 'text', id: 'topic-name', placeholder: 'e.g. payments', autocomplete: 'off' });
  const partitions = h('input', { type: 'number', id: 'topic-partitions', min: '0', value: '0', class: 'narrow' });
  openDialog({
    title: `New topic in ${tenant}/${ns}`,
    test: 'topic-dialog',
    body: h(
      'div',
      { class: 'form' },
      field('Name', prefixed(`persistent://${tenant}/${ns}/`, name)),
      field('Partitions', partitions, '0 makes a non-partitioned topic.'),
    ),
    actions: [
      { id: 'dialog-cancel', label: 'Cancel' },
      {
        id: 'dialog-submit',
        label: 'Create topic',
        kind: 'primary',
        run: async () => {
          const topic = name.value.trim();
          checkName(topic, 'topic');
          const n = Number(partitions.value || 0);
          if (!Number.isInteger(n) || n < 0) throw new Error('Partitions must be a whole number ≥ 0');
          const base = topicBase(tenant, ns, topic);
          if (n > 0) await api(`${base}/partitions`, { method: 'PUT', body: n });
          else await api(base, { method: 'PUT' });
          toast(`Created topic ${topic}${n ? ` with ${n} partitions` : ''}`);
          location.hash = topicHref(tenant, ns, topic);
        },
      },
    ],
  });
}

// ------------------------------------------------------------------------------------------
// Start

document.addEventListener('keydown', (event) => {
  if (event.key === '/' && !event.target.closest('input, textarea, dialog')) {
    const search = $('#search') || $('#topic-search') || $('#ns-search');
    if (search) {
      event.preventDefault();
      search.focus();
    }
  }
});

window.addEventListener('hashchange', route);
initSession();
clusterName();
route();
