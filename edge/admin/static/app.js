// The sipedge dashboard: renders the snapshots and events of
// /api/stream. Everything a phone sends (AOR, user agent) is text here:
// it goes into textContent, never into HTML.
'use strict';

(() => {
  const $ = (sel) => document.querySelector(sel);
  const maxEvents = 50;
  let skew = 0; // server clock minus ours, in ms: countdowns use the server's time
  let snap = null;
  const shown = {}; // what each table last showed, to redraw only on change

  // el makes an element; attrs are properties (dataset entries under "data").
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'data') Object.assign(e.dataset, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c instanceof Node ? c : String(c ?? ''));
    return e;
  }

  const now = () => Date.now() + skew;
  const time = (t) => new Date(t).toLocaleTimeString();

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
  }

  function ago(t) {
    const s = Math.round((now() - Date.parse(t)) / 1000);
    if (s < 60) return `${Math.max(0, s)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    return `${Math.floor(s / 3600)}h ago`;
  }

  // replace swaps the rows of tbody when key differs from what it shows.
  function replace(id, key, rows) {
    if (shown[id] === key) return;
    shown[id] = key;
    $(`#${id} tbody`).replaceChildren(...rows);
    $(`#${id}`).classList.toggle('is-empty', rows.length === 0);
  }

  function setText(id, text) {
    const e = document.getElementById(id);
    if (e.textContent !== String(text)) e.textContent = text;
  }

  function renderCounts(c) {
    setText('count-devices', c.devices);
    setText('count-flows', c.flows);
    setText('count-bans', c.bans);
    setText('count-cores', `${c.cores_up}/${c.cores}`);
    setText('count-regs-hour', c.registrations_hour);
    setText('count-fails-hour', c.failures_hour);
    $('#count-cores').classList.toggle('bad', c.cores > 0 && c.cores_up < c.cores);
  }

  function renderDevices() {
    const q = $('#filter').value.trim().toLowerCase();
    const list = snap.devices.filter((d) => !q ||
      [d.aor, d.tenant, d.user_agent, d.source, d.transport].some((v) => (v || '').toLowerCase().includes(q)));
    const rows = list.map((d) => el('tr', { data: { aor: d.aor, contact: d.contact, source: d.source } },
      el('td', { className: 'aor wrap' }, d.aor),
      el('td', { className: 'tenant' }, d.tenant || 'default'),
      el('td', { className: 'ua wrap' }, d.user_agent || ''),
      el('td', { className: 'source' }, d.source),
      el('td', { className: 'transport' }, d.transport),
      el('td', { className: d.nat === 'none' ? 'nat' : 'nat natted' }, d.nat),
      el('td', { className: 'keepalive' }, d.keepalive || '…'),
      el('td', { className: 'updated', data: { t: d.updated } }, ago(d.updated)),
      el('td', { className: 'expires', data: { t: d.expires } }, duration(Date.parse(d.expires) - now()))));
    replace('devices', q + JSON.stringify(snap.devices), rows);
    const total = snap.counts.devices;
    setText('devices-note', list.length < total ? `(${list.length} shown of ${total})` : '');
  }

  // tick moves the countdowns and the "ago"s once a second.
  function tick() {
    for (const td of document.querySelectorAll('#devices td.expires')) {
      const left = Date.parse(td.dataset.t) - now();
      td.textContent = left > 0 ? duration(left) : 'expired';
      td.classList.toggle('soon', left < 60000);
    }
    for (const td of document.querySelectorAll('#devices td.updated')) td.textContent = ago(td.dataset.t);
    setText('clock', new Date(now()).toLocaleTimeString());
  }

  function renderLost() {
    replace('lost', JSON.stringify(snap.lost), snap.lost.map((l) => el('tr', { data: { kind: l.kind } },
      el('td', {}, time(l.time)),
      el('td', { className: 'aor wrap' }, l.aor || ''),
      el('td', {}, [l.transport, l.source].filter(Boolean).join(' ')),
      el('td', { className: 'cause wrap' }, l.count > 1 ? `${l.cause} (${l.count} devices)` : l.cause))));
  }

  function renderAlerts() {
    replace('alerts', JSON.stringify(snap.alerts), snap.alerts.map((a) => el('tr', { data: { type: a.type } },
      el('td', {}, time(a.time)),
      el('td', { className: `sev ${a.severity.toLowerCase()}` }, a.severity),
      el('td', {}, a.type),
      el('td', { className: 'aor wrap' }, a.aor || ''),
      el('td', { className: 'detail wrap' }, a.detail || ''))));
  }

  function renderBans() {
    replace('bans', JSON.stringify(snap.bans), snap.bans.map((b) => el('tr', { data: { prefix: b.prefix } },
      el('td', { className: 'prefix' }, b.prefix),
      el('td', {}, b.reason),
      el('td', {}, new Date(b.until).toLocaleString()),
      el('td', {}, b.count),
      el('td', {}, el('button', { className: 'unban', type: 'button', data: { prefix: b.prefix } }, 'Unban')))));
  }

  function renderCores() {
    replace('cores', JSON.stringify(snap.cores), snap.cores.map((c) => el('tr', { data: { target: c.target, state: c.state } },
      el('td', {}, c.tenant || 'default'),
      el('td', {}, c.target),
      el('td', { className: `health ${c.state}` }, c.state))));
  }

  const svgNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // renderChart draws a bar a minute: registrations, failures on top.
  function renderChart() {
    const ms = snap.minutes, chart = $('#chart');
    // Drawn at the size it is shown, so bars and text are not stretched.
    const W = Math.max(300, Math.round(chart.getBoundingClientRect().width)), H = 140;
    const key = W + JSON.stringify(ms.map((m) => [m.registrations, m.failures]));
    if (shown.chart === key) return;
    shown.chart = key;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    const top = 14, bottom = 18, left = 4, slot = (W - left * 2) / ms.length;
    const max = Math.max(1, ...ms.map((m) => m.registrations + m.failures));
    const y = (n) => (n / max) * (H - top - bottom);
    const parts = [svg('line', { x1: 0, x2: W, y1: H - bottom, y2: H - bottom, class: 'axis' })];
    ms.forEach((m, i) => {
      const x = left + i * slot + 1, w = Math.max(1, slot - 2);
      const hr = y(m.registrations), hf = y(m.failures);
      const g = svg('g', {});
      g.append(svg('title', {}, `${time(m.start)}: ${m.registrations} registrations, ${m.failures} failures`));
      g.append(svg('rect', { x, y: H - bottom - hr, width: w, height: hr, class: 'reg' }));
      g.append(svg('rect', { x, y: H - bottom - hr - hf, width: w, height: hf, class: 'fail' }));
      parts.push(g);
    });
    parts.push(svg('text', { x: left, y: 11, class: 'tick' }, `max ${max}/min`));
    parts.push(svg('text', { x: left, y: H - 4, class: 'tick' }, '60 min ago'));
    parts.push(svg('text', { x: W - left, y: H - 4, class: 'tick end' }, 'now'));
    chart.replaceChildren(...parts);
  }

  function render(s) {
    snap = s;
    skew = Date.parse(s.time) - Date.now();
    renderCounts(s.counts);
    renderDevices();
    renderLost();
    renderAlerts();
    renderBans();
    renderCores();
    renderChart();
    tick();
  }

  function onEvent(e) {
    const what = [e.aor, e.prefix, e.core, e.transport && e.source ? `${e.transport} ${e.source}` : e.source,
      e.code ? String(e.code) : '', e.reason, e.detail].filter(Boolean).join(' · ');
    const li = el('li', { className: `sev ${e.severity.toLowerCase()}`, data: { kind: e.kind } },
      el('time', {}, time(e.time)), ' ', el('b', {}, e.kind), ' ', what);
    const list = $('#events');
    list.prepend(li);
    while (list.children.length > maxEvents) list.lastElementChild.remove();
  }

  function status(state, text) {
    const s = $('#status');
    s.dataset.state = state;
    s.textContent = text;
  }

  // connect opens the stream; the browser retries a broken one itself,
  // but not one the server refused (the cookie is gone): that waits.
  function connect() {
    const es = new EventSource('/api/stream');
    es.addEventListener('open', () => status('live', 'live'));
    es.addEventListener('snapshot', (m) => render(JSON.parse(m.data)));
    es.addEventListener('audit', (m) => onEvent(JSON.parse(m.data)));
    es.addEventListener('error', () => {
      if (es.readyState === EventSource.CLOSED) {
        status('down', 'disconnected: sign in again with /login?token=…');
        setTimeout(connect, 5000);
      } else {
        status('connecting', 'reconnecting…');
      }
    });
  }

  async function unban(prefix, button) {
    button.disabled = true;
    const msg = $('#bans-msg');
    try {
      const res = await fetch(`/api/bans?prefix=${encodeURIComponent(prefix)}`, { method: 'DELETE', credentials: 'same-origin' });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      msg.textContent = `unbanned ${body.unbanned || prefix}`;
      const tr = button.closest('tr');
      if (tr.parentNode) {
        tr.remove();
        $('#bans').classList.toggle('is-empty', $('#bans tbody').children.length === 0);
      }
      shown.bans = null; // the next snapshot redraws the table
    } catch (err) {
      msg.textContent = `unban ${prefix}: ${err.message}`;
      button.disabled = false;
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#bans').addEventListener('click', (e) => {
      const b = e.target.closest('button.unban');
      if (b) unban(b.dataset.prefix, b);
    });
    $('#filter').addEventListener('input', () => snap && renderDevices());
    window.addEventListener('resize', () => snap && renderChart());
    setInterval(tick, 1000);
    connect();
  });
})();
