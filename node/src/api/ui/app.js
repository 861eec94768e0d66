// bx3 dashboard: plain JavaScript, no dependencies, no build step.
//
// Data comes from this node's API only (same origin):
//   GET /v1/status every 2 s, GET /v1/dags every 2 s (mesh page),
//   GET /v1/dags/{id}?tasks=false&after=V  long poll (a DAG page), then only what is on
//   screen: a window of the task list (task_offset/task_limit, filtered by state=/q= on the
//   node), the whole DAG only when it is small enough to draw as a graph.
// Every string from the node is written as text (textContent), never parsed as HTML.
'use strict';

const TOKEN_KEY = 'bx3.api-token';
const POLL_MS = 2000;
const LONG_POLL_MS = 25000;
const MIN_REFRESH_MS = 500; // at most two refreshes a second of what a change touches
const GRAPH_MAX = 150;      // above this many tasks a graph is no longer readable
const ROW = 30;             // px, one row of the task list
const BLOCK = 100;          // tasks per request of the task list
const PREVIEW = 160;        // characters of output shown in the list
const OUTPUT_SHOWN = 20000; // characters of output shown in the task panel
const STATES = ['pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled'];

// ---------------------------------------------------------------------------------------
// Small helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, kids);
  return el;
}
function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
const SVGNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, kids);
  return el;
}
function clear(el) { while (el && el.firstChild) el.firstChild.remove(); return el; }
const $ = (sel, root) => (root || document).querySelector(sel);

function short(peer) {
  if (!peer) return '—';
  return peer.length <= 12 ? peer : '…' + peer.slice(-8);
}
function hue(text) {
  let x = 2166136261;
  for (let i = 0; i < text.length; i++) { x ^= text.charCodeAt(i); x = Math.imul(x, 16777619); }
  x ^= x >>> 13; x = Math.imul(x, 0x5bd1e995); x ^= x >>> 15;
  return Math.round(((x >>> 0) / 4294967296) * 24) * 15; // 24 well-separated hues
}
/// Nodes of the mesh get colours far apart (in the order of their ids, the same on every
/// page); a node the status no longer lists gets one from its id.
const PALETTE = ['#2f80ed', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#e67700', '#5c7cfa', '#a61e4d', '#087f5b'];
function nodeColor(peer) {
  const st = S.status;
  if (st && peer) {
    const ids = [st.peer_id, ...(st.peers || []).map(p => p.peer_id)].sort();
    const i = ids.indexOf(peer);
    if (i >= 0 && ids.length <= PALETTE.length) return PALETTE[i];
  }
  return `hsl(${hue(peer || '')} 62% 48%)`;
}
function nodeChip(peer) {
  if (!peer) return h('span', { class: 'muted', text: '—' });
  const dot = h('i');
  dot.style.background = nodeColor(peer);
  return h('span', { class: 'node-chip', title: peer }, dot, short(peer));
}
function badge(state, text) { return h('span', { class: 'badge ' + state, text: text || state }); }

function fmtDur(ms) {
  if (ms === undefined || ms === null || !isFinite(ms)) return '—';
  ms = Math.max(0, ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec < 10 ? sec.toFixed(2) : sec.toFixed(1)} s`;
  const m = Math.floor(sec / 60), r = Math.floor(sec % 60);
  if (m < 60) return `${m} min ${String(r).padStart(2, '0')} s`;
  const hh = Math.floor(m / 60);
  if (hh < 48) return `${hh} h ${String(m % 60).padStart(2, '0')} min`;
  return `${Math.floor(hh / 24)} d ${hh % 24} h`;
}
function fmtAge(at) {
  if (!at) return '—';
  const d = Date.now() - at;
  return d < 1500 ? 'just now' : fmtDur(d).replace(/\.\d+ s$/, ' s') + ' ago';
}
function fmtTime(at) {
  if (!at) return '—';
  const d = new Date(at);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  return today ? t : d.toLocaleDateString() + ' ' + t;
}
function timeEl(at) { return h('span', { title: at ? new Date(at).toISOString() : '', text: fmtTime(at) }); }
function fmtInt(n) { return (n || 0).toLocaleString('en-US'); }
function fmtMB(mb) {
  if (mb === undefined || mb === null) return '—';
  return mb >= 10240 ? `${(mb / 1024).toFixed(1)} GB` : `${fmtInt(mb)} MB`;
}
/// How long a task ran, or has been running.
function taskTime(t) {
  if (t.started_at_ms && t.finished_at_ms) return fmtDur(t.finished_at_ms - t.started_at_ms);
  if (t.started_at_ms && t.state === 'running') return fmtDur(Date.now() - t.started_at_ms) + '…';
  return '—';
}
function dagDuration(d) {
  if (d.finished_at_ms) return fmtDur(d.finished_at_ms - d.created_at_ms);
  if (d.state === 'running' || d.state === 'pending') return fmtDur(Date.now() - d.created_at_ms) + '…';
  return '—';
}
function progressBar(counts) {
  const total = counts.total || 0;
  const bar = h('div', { class: 'bar', title: STATES.map(k => `${k} ${counts[k] || 0}`).join(', ') });
  if (!total) return bar;
  for (const k of ['succeeded', 'failed', 'skipped', 'cancelled', 'running']) {
    if (!counts[k]) continue;
    const seg = h('span', { class: k });
    seg.style.width = (100 * counts[k] / total) + '%';
    bar.append(seg);
  }
  return bar;
}
function done(c) { return (c.succeeded || 0) + (c.failed || 0) + (c.skipped || 0) + (c.cancelled || 0); }
const sleep = ms => new Promise(r => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// The API, with the token when the node asks for one

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
let tokenPrompt = null;

function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const modal = $('#token-modal'), form = $('#token-form'), input = $('#token-input'), err = $('#token-error');
  err.hidden = !message;
  err.textContent = message || '';
  modal.hidden = false;
  input.value = '';
  input.focus();
  tokenPrompt = new Promise(resolve => {
    form.onsubmit = ev => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      modal.hidden = true;
      tokenPrompt = null;
      $('#token-clear').hidden = false;
      resolve();
    };
  });
  return tokenPrompt;
}

async function api(path, opts) {
  opts = opts || {};
  for (let attempt = 0; attempt < 4; attempt++) {
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    let resp;
    try {
      resp = await fetch(path, Object.assign({}, opts, { headers, credentials: 'same-origin', cache: 'no-store' }));
    } catch (e) {
      throw new ApiError(0, 'cannot reach the node (' + e.message + ')');
    }
    if (resp.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(token ? 'The node refused that token; try again.' : null);
      continue;
    }
    if (!resp.ok) {
      let message = resp.statusText;
      try { message = (await resp.json()).error || message; } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, message);
    }
    live(true);
    return resp;
  }
  throw new ApiError(401, 'no accepted API token');
}
const getJSON = async path => (await api(path)).json();

let lastOk = 0;
function live(ok, message) {
  if (ok) lastOk = Date.now();
  const el = $('#live');
  const good = Date.now() - lastOk < 7000;
  el.className = 'live ' + (good ? 'ok' : 'bad');
  $('#live-text').textContent = good ? 'live' : (message || 'node unreachable, retrying…');
}

// ---------------------------------------------------------------------------------------
// Shared state and routing

const S = {
  status: null,
  statusError: null,
  dags: null,
  dagsLimit: 25,
  gen: 0,        // bumped on every route change: loops of the old page stop
  page: null,    // the current page's render hooks
  statusSeen: [], // controller changes seen by this page while open (fallback)
};

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const parts = hash.split('/');
  if (parts[0] === 'dag' && parts[1]) {
    return { name: 'dag', id: parts[1], task: parts[2] === 'task' ? parts.slice(3).join('/') : null };
  }
  return { name: 'home' };
}

function navigate() {
  const r = route();
  const prev = S.page;
  if (prev && prev.name === 'dag' && r.name === 'dag' && prev.id === r.id) {
    prev.openTask(r.task); // same DAG: only the task panel changes
    return;
  }
  S.gen++;
  closeDrawer(false);
  const main = clear($('#main'));
  S.page = r.name === 'dag' ? dagPage(main, r.id, S.gen) : homePage(main, S.gen);
  if (r.name === 'dag' && r.task) S.page.openTask(r.task);
  window.scrollTo(0, 0);
}

// ---------------------------------------------------------------------------------------
// Status: top bar and the mesh panel

async function statusLoop() {
  for (;;) {
    if (!document.hidden) {
      try {
        const st = await getJSON('/v1/status');
        noteController(st);
        S.status = st;
        S.statusError = null;
      } catch (e) {
        S.statusError = e.message;
        live(false);
      }
      renderTop();
      if (S.page && S.page.onStatus) S.page.onStatus();
    }
    await sleep(POLL_MS);
  }
}

function noteController(st) {
  const last = S.statusSeen[S.statusSeen.length - 1];
  if (!last || last.controller !== st.leader || last.term !== st.term) {
    if (last || st.leader) S.statusSeen.push({ at_ms: Date.now(), term: st.term, controller: st.leader, seen: true });
    if (S.statusSeen.length > 100) S.statusSeen.shift();
  }
}

function renderTop() {
  const facts = clear($('#top-facts'));
  const st = S.status;
  if (!st) return;
  const role = st.role || (st.leader === st.peer_id ? 'controller' : 'follower');
  append(facts, [
    h('span', {}, 'this node ', h('b', {}, nodeChip(st.peer_id)), ' ', badge(role)),
    h('span', {}, 'controller ', h('b', {}, st.leader ? nodeChip(st.leader) : 'electing…')),
    h('span', {}, 'term ', h('b', { text: fmtInt(st.term) })),
    h('span', {}, 'nodes ', h('b', { text: String(1 + (st.peers || []).filter(p => p.alive !== false).length) })),
    st.private_mesh ? h('span', {}, h('b', { text: 'private mesh' })) : null,
    h('span', {}, 'v', st.version || '?'),
  ]);
}

function meshRows(st) {
  const me = {
    peer_id: st.peer_id, executors: st.executors || {}, version: st.version, alive: true,
    replica_seq: st.replica_seq, replica_behind: 0, me: true, addrs: st.listen_addrs || [],
  };
  return [me, ...(st.peers || [])];
}

/// Which limit sized a node's executors: what the node says, else what this node's own
/// figures show (peers do not announce their cap).
function limitText(e, me) {
  let by = e.limited_by;
  if (!by && me) by = e.max_executors && e.total >= e.max_executors ? 'max-executors' : 'ram';
  if (!by) return null;
  return { ram: 'RAM', cpu: 'CPU cores', 'max-executors': '--max-executors' }[by] || by;
}

function renderMesh(panel) {
  const st = S.status;
  const body = clear($('.mesh-body', panel));
  if (S.statusError && !st) {
    body.append(h('div', { class: 'banner', text: 'Cannot reach this node: ' + S.statusError }));
    return;
  }
  if (!st) { body.append(h('div', { class: 'empty', text: 'Loading…' })); return; }
  const rows = meshRows(st);
  $('.mesh-sub', panel).textContent =
    `${rows.filter(r => r.alive !== false).length} of ${rows.length} nodes up · ` +
    `${fmtInt(rows.reduce((a, r) => a + (r.alive !== false ? (r.executors.busy || 0) : 0), 0))} / ` +
    `${fmtInt(rows.reduce((a, r) => a + (r.alive !== false ? (r.executors.total || 0) : 0), 0))} executors busy`;
  const table = h('table', { class: 'grid mesh-table' },
    h('thead', {}, h('tr', {},
      h('th', { text: 'Node' }), h('th', { text: 'Role' }), h('th', { text: 'State' }),
      h('th', { text: 'Executors busy / total' }), h('th', { text: 'RAM' }),
      h('th', { text: 'Replica' }), h('th', { text: 'Version' }), h('th', { text: 'Last seen' }))));
  const tb = h('tbody');
  for (const n of rows) {
    const e = n.executors || {};
    const isCtl = st.leader && n.peer_id === st.leader;
    const role = isCtl ? 'controller' : (n.me ? (st.role || 'follower') : 'follower');
    const busyBar = h('div', { class: 'bar' });
    const seg = h('span', { class: 'busy' });
    seg.style.width = (e.total ? 100 * Math.min(1, (e.busy || 0) / e.total) : 0) + '%';
    busyBar.append(seg);
    const behind = n.replica_behind || 0;
    // A member whose announcement has not arrived yet has no figures to show.
    const silent = !n.me && !n.version && !e.total && !e.available_ram_mb;
    tb.append(h('tr', { class: n.alive === false ? 'down' : '' },
      h('td', {}, nodeChip(n.peer_id), n.me ? [' ', badge('me', 'this node')] : null,
        h('span', { class: 'peer-full', text: n.peer_id })),
      h('td', {}, badge(role)),
      h('td', {}, n.alive === false ? badge('down') : badge('alive', 'up')),
      silent ? h('td', { class: 'muted', text: 'waiting for its announcement' }) : h('td', {}, h('div', { class: 'barcell' }, busyBar,
        h('span', { class: 'mono', text: `${fmtInt(e.busy)} / ${fmtInt(e.total)}` })),
        h('span', { class: 'muted', text: [limitText(e, n.me) && `sized by ${limitText(e, n.me)}`,
          e.cpu_cores && `${e.cpu_cores} cores`].filter(Boolean).join(' · ') })),
      silent ? h('td', { class: 'muted', text: '—' }) : h('td', {}, h('span', { text: `${fmtMB(e.available_ram_mb)} free` }),
        h('span', { class: 'subline', text: `${fmtMB(e.ram_per_executor_mb)} each · keeps ${fmtMB(e.min_free_ram_mb)}` })),
      h('td', { class: 'num' }, h('span', { text: `#${fmtInt(n.replica_seq)}` }),
        h('span', { class: 'subline', text: isCtl ? 'source' : (behind ? `${fmtInt(behind)} behind` : 'up to date') })),
      h('td', { class: 'mono', text: n.version || '—' }),
      h('td', { text: n.me ? 'now' : (n.last_seen_ms ? fmtAge(n.last_seen_ms) : (n.alive === false ? 'down' : 'connected')) }),
    ));
  }
  table.append(tb);
  body.append(table);
  renderChanges(panel, st);
}

function renderChanges(panel, st) {
  const box = clear($('.changes-body', panel));
  const now = Date.now(), from = now - 3600e3;
  const recorded = (st.controller_changes || []).filter(c => c.at_ms >= from);
  const list = recorded.length ? recorded : S.statusSeen.filter(c => c.at_ms >= from);
  const W = 600, H = 24;
  const svgEl = s('svg', { class: 'timeline', viewBox: `-8 0 ${W + 16} ${H}` },
    s('line', { class: 'axis', x1: 0, y1: H / 2, x2: W, y2: H / 2 }));
  for (const c of list) {
    const x = (c.at_ms - from) / 3600e3 * W;
    svgEl.append(s('circle', { cx: x, cy: H / 2, r: 7, fill: c.controller ? nodeColor(c.controller) : 'var(--failed)' },
      s('title', { text: `${fmtTime(c.at_ms)}: term ${c.term}, ${c.controller || 'no controller (election)'}` })));
  }
  box.append(svgEl, h('div', { class: 'ticks' }, ['60 min ago', '45', '30', '15', 'now'].map(t => h('span', { text: t }))));
  const ul = h('ul', { class: 'changes' });
  for (const c of list.slice().reverse()) {
    ul.append(h('li', {}, timeEl(c.at_ms), ' · term ', String(c.term), ' · ',
      c.controller ? nodeChip(c.controller) : h('span', { class: 'error', text: 'no controller' })));
  }
  if (!list.length) ul.append(h('li', { class: 'muted', text: 'No change of controller in the last hour.' }));
  box.append(ul);
  $('.changes-note', panel).textContent = recorded.length
    ? 'as this node recorded them' : 'as this page saw them while open';
}

// ---------------------------------------------------------------------------------------
// The mesh page: nodes, controller changes, DAGs

function homePage(main, gen) {
  const mesh = h('section', { class: 'panel', id: 'mesh' },
    h('div', { class: 'panel-head' }, h('h2', { text: 'Mesh' }), h('span', { class: 'sub mesh-sub' })),
    h('div', { class: 'mesh-layout' },
      h('div', { class: 'mesh-body' }),
      h('div', {}, h('h3', { text: 'Controller changes, last hour' }),
        h('div', { class: 'muted changes-note' }), h('div', { class: 'changes-body' }))));
  const dags = h('section', { class: 'panel', id: 'dags' },
    h('div', { class: 'panel-head' }, h('h2', { text: 'DAGs' }), h('span', { class: 'sub dags-sub' })),
    h('div', { class: 'dags-body' }, h('div', { class: 'empty', text: 'Loading…' })));
  main.append(mesh, dags);
  renderMesh(mesh);
  const page = {
    name: 'home',
    onStatus: () => renderMesh(mesh),
    tick: () => { if (S.dags && !document.hidden) renderDags(dags); },
  };
  (async () => {
    while (gen === S.gen) {
      if (!document.hidden) {
        try {
          S.dags = await getJSON('/v1/dags?limit=' + S.dagsLimit);
          S.dagsError = null;
        } catch (e) { S.dagsError = e.message; }
        if (gen !== S.gen) return;
        renderDags(dags);
      }
      await sleep(POLL_MS);
    }
  })();
  return page;
}

function renderDags(panel) {
  const body = clear($('.dags-body', panel));
  if (S.dagsError && !S.dags) { body.append(h('div', { class: 'banner', text: 'Cannot list DAGs: ' + S.dagsError })); return; }
  const list = S.dags || [];
  const active = list.filter(d => !['succeeded', 'failed', 'cancelled'].includes(d.state)).length;
  $('.dags-sub', panel).textContent = list.length ? `${active} active · newest first` : '';
  if (!list.length) {
    body.append(h('div', { class: 'empty' }, 'No DAGs yet. Submit one with ', h('code', { text: 'bx3-node submit dags/hello_fanout.yaml --wait' })));
    return;
  }
  const table = h('table', { class: 'grid dag-table' },
    h('thead', {}, h('tr', {}, h('th', { text: 'State' }), h('th', { text: 'Name' }),
      h('th', { text: 'Progress' }), h('th', { class: 'num', text: 'Tasks done' }),
      h('th', { class: 'num', text: 'Age' }), h('th', { class: 'num', text: 'Duration' }))));
  const tb = h('tbody');
  for (const d of list) {
    const c = d.counts || {};
    tb.append(h('tr', { class: 'click', 'data-dag': d.id, onclick: () => { location.hash = '#/dag/' + encodeURIComponent(d.id); } },
      h('td', {}, badge(d.state)),
      h('td', {}, h('a', { href: '#/dag/' + encodeURIComponent(d.id), text: d.name }), h('span', { class: 'peer-full', text: d.id })),
      h('td', {}, progressBar(c)),
      h('td', { class: 'num', text: `${fmtInt(done(c))} / ${fmtInt(c.total)}` + (c.failed ? ` (${fmtInt(c.failed)} failed)` : '') }),
      h('td', { class: 'num', title: new Date(d.created_at_ms).toISOString(), text: fmtAge(d.created_at_ms) }),
      h('td', { class: 'num', text: dagDuration(d) })));
  }
  table.append(tb);
  body.append(table);
  if (list.length >= S.dagsLimit) {
    body.append(h('div', { class: 'row-end' }, h('button', {
      text: 'Show more', onclick: () => { S.dagsLimit = Math.min(S.dagsLimit * 4, 10000); renderDags(panel); },
    })));
  }
}

// ---------------------------------------------------------------------------------------
// A DAG: summary, cancel, graph, task list, task panel

function dagPage(main, id, gen) {
  const page = {
    name: 'dag', id, dag: null, tasks: null, layout: null, openTaskId: null,
    filter: new Set(), q: '', matched: 0, blocks: new Map(), want: new Set(), stamp: 0,
  };
  const head = h('section', { class: 'panel' }, h('div', { class: 'empty', text: 'Loading DAG ' + id + '…' }));
  const graph = h('section', { class: 'panel', id: 'graph', hidden: true });
  const list = h('section', { class: 'panel', id: 'tasks' });
  main.append(h('div', {}, h('a', { href: '#/', text: '← mesh and DAGs' })), head, graph, list);

  // Task list: a virtual list over server-side pages.
  const search = h('input', { type: 'search', placeholder: 'task id contains…', 'aria-label': 'Filter tasks by id' });
  const chips = h('div', { class: 'chips' });
  const vlist = h('div', { class: 'vlist', tabindex: 0 });
  const spacer = h('div', { class: 'spacer' });
  const header = h('div', { class: 'vrow head' }, ['Task', 'State', 'Tries', 'Node', 'Time', 'Output or error'].map(t => h('span', { text: t })));
  vlist.append(header, spacer);
  const listNote = h('span', { class: 'muted' });
  list.append(h('div', { class: 'panel-head' }, h('h2', { text: 'Tasks' }), listNote),
    h('div', { class: 'tools' }, chips, h('span', { class: 'grow' }), search), vlist);
  let searchTimer = null;
  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { page.q = search.value.trim(); resetList(); }, 250);
  });
  vlist.addEventListener('scroll', () => drawRows());

  function resetList() {
    page.blocks.clear();
    page.want.clear();
    vlist.scrollTop = 0;
    page.stamp++;
    drawRows();
  }
  function queryString(offset) {
    const p = new URLSearchParams({ tasks: 'false', task_offset: offset, task_limit: BLOCK, preview: PREVIEW });
    if (page.filter.size) p.set('state', [...page.filter].join(','));
    if (page.q) p.set('q', page.q);
    return p.toString();
  }
  async function loadBlock(b) {
    if (page.want.has(b)) return;
    page.want.add(b);
    const stamp = page.stamp;
    try {
      const v = await getJSON(`/v1/dags/${encodeURIComponent(id)}?` + queryString(b * BLOCK));
      if (gen !== S.gen || stamp !== page.stamp) return;
      page.matched = v.page ? v.page.matched : v.order.length;
      page.blocks.set(b, { rows: v.order.map(tid => [tid, v.tasks[tid]]), version: v.version });
    } catch (e) {
      if (gen === S.gen) listNote.textContent = 'could not load tasks: ' + e.message;
    } finally {
      page.want.delete(b);
    }
    if (gen === S.gen && stamp === page.stamp) drawRows();
  }
  function drawRows() {
    if (gen !== S.gen) return;
    const total = page.matched;
    spacer.style.height = (total * ROW) + 'px';
    // As tall as the tasks need (a 4-task DAG gets no empty box), at most most of the window.
    vlist.style.height = Math.max(3 * ROW, Math.min(window.innerHeight * 0.62, 640, (total + 1) * ROW + 4)) + 'px';
    const top = Math.max(0, vlist.scrollTop - ROW);
    const first = Math.floor(top / ROW);
    const count = Math.ceil(vlist.clientHeight / ROW) + 2;
    const last = Math.min(total, first + count);
    for (const el of [...spacer.children]) el.remove();
    const needed = new Set();
    for (let i = first; i < last; i++) {
      const b = Math.floor(i / BLOCK);
      const block = page.blocks.get(b);
      const row = block && block.rows[i - b * BLOCK];
      if (!block || block.stale) needed.add(b);
      spacer.append(taskRow(i, row));
    }
    if (!page.blocks.size) needed.add(0);
    for (const b of needed) loadBlock(b);
    const f = page.filter.size ? ` matching ${[...page.filter].join(', ')}` : '';
    const q = page.q ? ` with “${page.q}” in the id` : '';
    if (page.dag) listNote.textContent = `${fmtInt(total)} of ${fmtInt(page.dag.counts.total)} tasks${f}${q}`;
  }
  function taskRow(i, row) {
    const el = h('div', { class: 'vrow' + (row ? '' : ' loading') });
    el.style.top = (i * ROW) + 'px';
    if (!row) {
      append(el, [h('span', { text: '…' })]);
      return el;
    }
    const [tid, t] = row;
    if (tid === page.openTaskId) el.classList.add('sel');
    const isErr = t.state !== 'succeeded' && t.error;
    append(el, [
      h('span', { class: 'id', title: tid, text: tid }),
      h('span', {}, badge(t.state)),
      h('span', { class: 'mono', text: String(t.attempts || 0) }),
      h('span', {}, nodeChip(t.node)),
      h('span', { class: 'mono', text: taskTime(t) }),
      h('span', { class: 'out' + (isErr ? ' err' : ''), text: (isErr ? t.error : (t.output || '')).replace(/\s+/g, ' ') }),
    ]);
    el.dataset.task = tid;
    el.addEventListener('click', () => { location.hash = `#/dag/${encodeURIComponent(id)}/task/${encodeURIComponent(tid)}`; });
    return el;
  }
  function renderChips() {
    clear(chips);
    const c = (page.dag && page.dag.counts) || {};
    chips.append(h('span', { class: 'chip' + (page.filter.size ? '' : ' on'), onclick: () => { page.filter.clear(); renderChips(); resetList(); } },
      'all', h('span', { class: 'n', text: fmtInt(c.total) })));
    for (const st of STATES) {
      const dot = h('i');
      dot.style.background = `var(--${st})`;
      chips.append(h('span', {
        class: 'chip' + (page.filter.has(st) ? ' on' : ''), 'data-state': st,
        onclick: () => { page.filter.has(st) ? page.filter.delete(st) : page.filter.add(st); renderChips(); resetList(); },
      }, dot, st, h('span', { class: 'n', text: fmtInt(c[st]) })));
    }
  }

  // Summary and cancel.
  let confirmOpen = false;
  function renderHead() {
    const d = page.dag;
    clear(head);
    const terminal = ['succeeded', 'failed', 'cancelled'].includes(d.state);
    const cancel = terminal ? null : h('button', { class: 'danger', id: 'cancel', text: 'Cancel DAG', onclick: () => { confirmOpen = true; renderHead(); } });
    const c = d.counts || {};
    append(head, [
      h('div', { class: 'dag-head' }, badge(d.state), h('h1', { text: d.name }), h('span', { class: 'grow' }), cancel),
      confirmOpen && !terminal ? h('div', { class: 'banner', id: 'cancel-confirm' },
        `Cancel “${d.name}”? Running tasks are stopped and pending ones cancelled; finished tasks keep their results. `,
        h('button', { class: 'danger armed', id: 'cancel-yes', text: 'Yes, cancel it', onclick: doCancel }), ' ',
        h('button', { id: 'cancel-no', text: 'Keep it running', onclick: () => { confirmOpen = false; renderHead(); } })) : null,
      page.cancelError ? h('div', { class: 'banner', text: page.cancelError }) : null,
      d.description ? h('p', { class: 'muted', text: d.description }) : null,
      h('div', { class: 'barcell' }, progressBar(c), h('span', { class: 'mono', text: `${fmtInt(done(c))} / ${fmtInt(c.total)} done` })),
      h('div', { class: 'facts' },
        h('div', {}, h('span', { text: 'id' }), h('code', { text: d.id })),
        h('div', {}, h('span', { text: 'created' }), timeEl(d.created_at_ms), ' · ', fmtAge(d.created_at_ms)),
        h('div', {}, h('span', { text: d.finished_at_ms ? 'took' : 'running for' }), h('span', { id: 'dag-took', text: dagDuration(d) })),
        h('div', {}, h('span', { text: 'coordinator' }), nodeChip(d.coordinator || (S.status && S.status.leader) || null)),
        d.source ? h('div', {}, h('span', { text: 'source' }), h('code', { text: d.source })) : null,
        h('div', {}, h('span', { text: 'running / failed' }), `${fmtInt(c.running)} / ${fmtInt(c.failed)}`)),
    ]);
  }
  async function doCancel() {
    page.cancelError = null;
    try {
      await api(`/v1/dags/${encodeURIComponent(id)}/cancel`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
      confirmOpen = false;
      await refresh(true);
    } catch (e) {
      page.cancelError = 'Could not cancel: ' + e.message;
      confirmOpen = false;
      renderHead();
    }
  }

  // Graph of small DAGs.
  async function refreshGraph() {
    if (!page.dag || page.dag.counts.total > GRAPH_MAX) {
      graph.hidden = !page.dag;
      if (page.dag) {
        clear(graph).append(h('div', { class: 'panel-head' }, h('h2', { text: 'Graph' }),
          h('span', { class: 'sub', text: `drawn for DAGs of up to ${GRAPH_MAX} tasks; this one has ${fmtInt(page.dag.counts.total)}, so use the task list below` })));
      }
      return;
    }
    const v = await getJSON(`/v1/dags/${encodeURIComponent(id)}?tasks=true`);
    if (gen !== S.gen) return;
    page.tasks = v;
    if (!page.layout) page.layout = layoutGraph(v.order, v.tasks);
    drawGraph(graph, page, id);
    graph.hidden = false;
  }

  // Keeping up: a long poll on the DAG's version, then a refresh of what is on screen.
  async function refresh(force) {
    const v = await getJSON(`/v1/dags/${encodeURIComponent(id)}?tasks=false`);
    if (gen !== S.gen) return;
    apply(v, force);
  }
  function apply(v, force) {
    const changed = force || !page.dag || v.version !== page.dag.version || v.state !== page.dag.state;
    const first = !page.dag;
    page.dag = v;
    if (!changed) return;
    renderHead();
    renderChips();
    for (const b of page.blocks.values()) b.stale = true;
    if (first) page.matched = v.counts.total;
    drawRows();
    refreshGraph().catch(() => {});
    if (page.openTaskId) loadTask(page.openTaskId);
  }
  (async () => {
    let failures = 0;
    while (gen === S.gen) {
      try {
        if (!page.dag) { await refresh(true); continue; }
        if (['succeeded', 'failed', 'cancelled'].includes(page.dag.state)) {
          // Finished: nothing changes any more; look again now and then (a replica may lag).
          await sleep(10 * POLL_MS);
          await refresh(false);
          continue;
        }
        const began = Date.now();
        const v = await getJSON(`/v1/dags/${encodeURIComponent(id)}?tasks=false&after=${page.dag.version}&wait_ms=${LONG_POLL_MS}`);
        if (gen !== S.gen) return;
        apply(v, false);
        failures = 0;
        const spent = Date.now() - began;
        if (spent < MIN_REFRESH_MS) await sleep(MIN_REFRESH_MS - spent);
      } catch (e) {
        if (gen !== S.gen) return;
        if (e.status === 404) {
          clear(head).append(h('div', { class: 'banner', text: `No DAG ${id} on this mesh (${e.message}).` }));
          return;
        }
        failures++;
        live(false, e.message);
        await sleep(Math.min(10000, 500 * 2 ** failures));
      }
    }
  })();

  // The task panel.
  async function loadTask(tid) {
    const stamp = (page.taskStamp = (page.taskStamp || 0) + 1);
    try {
      const v = await getJSON(`/v1/dags/${encodeURIComponent(id)}?tasks=false&task_limit=1&task=${encodeURIComponent(tid)}`);
      if (gen !== S.gen || page.openTaskId !== tid || stamp !== page.taskStamp) return;
      const t = v.tasks[tid];
      if (!t) { renderDrawerMessage(`No task ${tid} in this DAG.`); return; }
      renderTask(v, tid, t);
    } catch (e) {
      if (page.openTaskId === tid) renderDrawerMessage('Could not load the task: ' + e.message);
    }
  }
  page.openTask = tid => {
    page.openTaskId = tid;
    if (!tid) { closeDrawer(false); drawRows(); return; }
    openDrawer();
    loadTask(tid);
    drawRows();
    if (page.layout) drawGraph(graph, page, id);
  };
  page.onStatus = () => {
    // Node colours come from the status: draw once more when the first one arrives.
    if (page.coloured || !S.status) return;
    page.coloured = true;
    drawRows();
    if (page.layout) drawGraph(graph, page, id);
  };
  page.tick = () => {
    // Only running times move; a finished DAG's page does nothing until something changes.
    if (!page.dag || document.hidden || ['succeeded', 'failed', 'cancelled'].includes(page.dag.state)) return;
    drawRows();
    const took = $('#dag-took');
    if (took) took.textContent = dagDuration(page.dag);
  };
  return page;
}

function openDrawer() { $('#drawer').hidden = false; }
function closeDrawer(updateHash) {
  const d = $('#drawer');
  d.hidden = true;
  clear(d);
  if (updateHash && S.page && S.page.name === 'dag') location.hash = '#/dag/' + encodeURIComponent(S.page.id);
}
function renderDrawerMessage(text) {
  const d = clear($('#drawer'));
  d.append(h('button', { class: 'close', text: 'Close', onclick: () => closeDrawer(true) }), h('p', { text }));
}

function renderTask(dag, tid, t) {
  const d = clear($('#drawer'));
  const deps = (t.depends_on || []).map(x => h('a', { class: 'tag', href: `#/dag/${encodeURIComponent(dag.id)}/task/${encodeURIComponent(x)}`, text: x }));
  const out = t.output;
  let download = null;
  if (out !== null && out !== undefined) {
    const url = URL.createObjectURL(new Blob([out], { type: 'text/plain;charset=utf-8' }));
    download = h('a', { href: url, download: `${dag.name}-${tid}.txt`.replace(/[^\w.-]+/g, '_'), text: `Download (${fmtInt(new Blob([out]).size)} bytes)` });
  }
  const attempts = t.attempt_log || [];
  append(d, [
    h('button', { class: 'close', text: 'Close', onclick: () => closeDrawer(true) }),
    h('div', { class: 'muted', text: dag.name }),
    h('h2', { text: tid }),
    h('div', { class: 'kv' },
      h('span', { text: 'state' }), h('span', {}, badge(t.state)),
      h('span', { text: 'node' }), h('span', {}, nodeChip(t.node), t.node ? h('span', { class: 'peer-full', text: t.node }) : null),
      h('span', { text: 'module' }), h('code', { text: t.module || '—' }),
      h('span', { text: 'attempts' }), h('span', { text: String(t.attempts || 0) }),
      h('span', { text: 'queued' }), timeEl(t.queued_at_ms),
      h('span', { text: 'started' }), h('span', {}, timeEl(t.started_at_ms),
        t.queued_at_ms && t.started_at_ms ? h('span', { class: 'muted', text: ` (waited ${fmtDur(t.started_at_ms - t.queued_at_ms)})` }) : null),
      h('span', { text: 'finished' }), timeEl(t.finished_at_ms),
      h('span', { text: 'took' }), h('span', { text: taskTime(t) }),
      h('span', { text: 'depends on' }), h('span', { class: 'tags' }, deps.length ? deps : h('span', { class: 'muted', text: 'nothing' })),
    ),
    h('h3', { text: 'Inputs' }),
    (t.inputs || []).length
      ? h('div', { class: 'tags' }, t.inputs.map(x => h('span', { class: 'tag', text: x })))
      : h('div', { class: 'muted', text: 'no inputs (argv is just the module name)' }),
    h('h3', {}, 'Output ', download ? [' · ', download] : null),
    out === null || out === undefined
      ? h('div', { class: 'muted', text: t.state === 'succeeded' ? '(empty)' : 'no output (the task has not succeeded)' })
      : [h('pre', { class: 'box output', text: out.length > OUTPUT_SHOWN ? out.slice(0, OUTPUT_SHOWN) : out }),
        out.length > OUTPUT_SHOWN ? h('div', { class: 'muted', text: `showing the first ${fmtInt(OUTPUT_SHOWN)} of ${fmtInt(out.length)} characters; download for all of it` }) : null],
    t.error ? [h('h3', { text: 'Error' }), h('pre', { class: 'box err', text: t.error })] : null,
    h('h3', { text: 'Stderr (tail)' }),
    t.stderr ? h('pre', { class: 'box stderr', text: t.stderr }) : h('div', { class: 'muted', text: 'nothing recorded' }),
    h('h3', { text: 'Attempts' }),
    attempts.length ? attemptTable(attempts) : h('div', { class: 'muted', text: `${t.attempts || 0} attempt(s); no per-attempt record on this node` }),
  ]);
}

function attemptTable(attempts) {
  const table = h('table', { class: 'grid' }, h('thead', {}, h('tr', {},
    ['#', 'Outcome', 'Node', 'Queued', 'Started', 'Finished', 'Took'].map(x => h('th', { text: x })))));
  const tb = h('tbody');
  for (const a of attempts) {
    tb.append(h('tr', {},
      h('td', { text: String(a.attempt) }),
      h('td', {}, badge({ running: 'running', succeeded: 'succeeded', failed: 'failed', cancelled: 'cancelled', interrupted: 'skipped' }[a.outcome] || 'pending', a.outcome)),
      h('td', {}, nodeChip(a.node)),
      h('td', {}, timeEl(a.queued_at_ms)),
      h('td', {}, timeEl(a.started_at_ms)),
      h('td', {}, timeEl(a.finished_at_ms)),
      h('td', { class: 'mono', text: a.started_at_ms && a.finished_at_ms ? fmtDur(a.finished_at_ms - a.started_at_ms) : (a.started_at_ms ? fmtDur(Date.now() - a.started_at_ms) + '…' : '—') })));
    if (a.error || a.stderr) {
      tb.append(h('tr', {}, h('td', { colspan: 7 },
        a.error ? h('pre', { class: 'box err', text: a.error }) : null,
        a.stderr ? h('details', {}, h('summary', { text: 'stderr' }), h('pre', { class: 'box', text: a.stderr })) : null)));
    }
  }
  table.append(tb);
  return table;
}

// ---------------------------------------------------------------------------------------
// Graph layout: layers by longest path from a source, order within layers by barycenters.

const BW = 150, BH = 42, GX = 60, GY = 14, PAD = 16;

function layoutGraph(order, tasks) {
  const n = order.length;
  const index = new Map(order.map((id, i) => [id, i]));
  const deps = order.map(id => ((tasks[id] && tasks[id].depends_on) || []).map(d => index.get(d)).filter(x => x !== undefined));
  const children = order.map(() => []);
  deps.forEach((ds, i) => ds.forEach(d => children[d].push(i)));
  // Kahn's order, then each task one layer past its deepest dependency.
  const indeg = deps.map(ds => ds.length);
  const queue = [];
  indeg.forEach((k, i) => { if (!k) queue.push(i); });
  const layer = new Array(n).fill(0);
  for (let qi = 0; qi < queue.length; qi++) {
    const i = queue[qi];
    for (const c of children[i]) {
      layer[c] = Math.max(layer[c], layer[i] + 1);
      if (--indeg[c] === 0) queue.push(c);
    }
  }
  const layers = [];
  for (let i = 0; i < n; i++) (layers[layer[i]] = layers[layer[i]] || []).push(i);
  const pos = new Array(n).fill(0);
  const place = () => layers.forEach(l => l.forEach((t, k) => { pos[t] = k; }));
  place();
  const bary = (t, nbrs) => nbrs.length ? nbrs.reduce((a, x) => a + pos[x], 0) / nbrs.length : pos[t];
  for (let sweep = 0; sweep < 4; sweep++) {
    const down = sweep % 2 === 0;
    const seq = down ? layers.slice(1) : layers.slice(0, -1).reverse();
    for (const l of seq) {
      const key = new Map(l.map(t => [t, bary(t, down ? deps[t] : children[t])]));
      l.sort((a, b) => key.get(a) - key.get(b) || a - b);
      l.forEach((t, k) => { pos[t] = k; });
    }
  }
  const tall = Math.max(...layers.map(l => l.length));
  const xy = new Array(n);
  layers.forEach((l, li) => {
    const offset = (tall - l.length) * (BH + GY) / 2;
    l.forEach((t, k) => { xy[t] = [PAD + li * (BW + GX), PAD + offset + k * (BH + GY)]; });
  });
  return { order, deps, xy, width: PAD * 2 + layers.length * (BW + GX) - GX, height: PAD * 2 + tall * (BH + GY) - GY, layers: layers.length };
}

/// The node's colour down the left edge of a task's box (a style property, which the
/// state's stylesheet rule cannot override).
function stripe(peer) {
  const r = s('rect', { class: 'stripe', x: 0, y: 0, width: 6, height: BH, rx: 2 });
  r.style.fill = nodeColor(peer);
  return r;
}

function drawGraph(panel, page, dagId) {
  const L = page.layout, v = page.tasks;
  if (!L || !v) return;
  const svgEl = s('svg', { class: 'graph', width: L.width, height: L.height, viewBox: `0 0 ${L.width} ${L.height}`, role: 'img', 'aria-label': 'DAG graph' });
  const edges = s('g');
  L.deps.forEach((ds, i) => ds.forEach(d => {
    const [x1, y1] = L.xy[d], [x2, y2] = L.xy[i];
    const a = x1 + BW, b = y1 + BH / 2, c = x2, e = y2 + BH / 2;
    edges.append(s('path', { class: 'edge', d: `M${a},${b} C${a + GX / 2},${b} ${c - GX / 2},${e} ${c},${e}` }));
  }));
  svgEl.append(edges);
  L.order.forEach((tid, i) => {
    const t = v.tasks[tid] || { state: 'pending' };
    const [x, y] = L.xy[i];
    const label = tid.length > 20 ? tid.slice(0, 19) + '…' : tid;
    const sub = t.node ? `${short(t.node)} · ${taskTime(t) !== '—' ? taskTime(t) : t.state}` : t.state;
    const g = s('g', {
      class: `box ${t.state}` + (tid === page.openTaskId ? ' sel' : ''), transform: `translate(${x},${y})`, 'data-task': tid,
      onclick: () => { location.hash = `#/dag/${encodeURIComponent(dagId)}/task/${encodeURIComponent(tid)}`; },
    },
    s('title', { text: `${tid}: ${t.state}${t.node ? ' on ' + t.node : ''}` }),
    s('rect', { width: BW, height: BH, rx: 6 }),
    t.node ? stripe(t.node) : null,
    s('text', { x: 12, y: 17, text: label }),
    s('text', { class: 'sub', x: 12, y: 33, text: sub }));
    svgEl.append(g);
  });
  clear(panel).append(
    h('div', { class: 'panel-head' }, h('h2', { text: 'Graph' }),
      h('span', { class: 'sub', text: `${L.order.length} tasks in ${L.layers} layers · colour is state, the stripe is the node that ran it` })),
    h('div', { class: 'graph-wrap' }, svgEl));
}

// ---------------------------------------------------------------------------------------
// Start

document.addEventListener('DOMContentLoaded', () => {
  if (sessionStorage.getItem(TOKEN_KEY)) $('#token-clear').hidden = false;
  $('#token-clear').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); $('#token-clear').hidden = true; });
  document.addEventListener('keydown', ev => { if (ev.key === 'Escape' && !$('#drawer').hidden) closeDrawer(true); });
  window.addEventListener('hashchange', navigate);
  navigate();
  statusLoop();
  setInterval(() => { live(false); if (S.page && S.page.tick) S.page.tick(); }, 1000);
});
