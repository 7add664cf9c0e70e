// ringwatch web UI: wallboard, supervisor console, QA view, login. Plain JS, no build step.
"use strict";

const I18N = {
  zh: {
    app: "实时话务监控", login: "登录", user: "用户名", password: "密码", logout: "退出",
    wallboard: "话务大屏", console: "班长监控台", qa: "质检", offline: "未连接", online: "已连接",
    calls_waiting: "排队等待", longest_wait_s: "最长等待", service_level: "服务水平", asa_s: "平均应答速度", aht_s: "平均通话时长",
    abandon_rate: "放弃率", in_answer_today: "超时接听(今日)", out_hours_today: "违规时段外呼(今日)",
    transfers_over_limit: "转接超时", callbacks_due: "待回电", callbacks_overdue: "回电超时",
    line_connect_rate: "线路接通率(今日)", inbound_short: "呼入", outbound_short: "呼出",
    available: "空闲", ringing: "振铃", talking: "通话", wrapup: "话后整理", paused: "小休", offline_agents: "离线",
    live_calls: "实时通话", open_alerts: "未处理告警", agents: "坐席", commitments_due: "待办承诺",
    queue: "队列", agent: "坐席", state: "状态", time: "时长", caller: "来电", actions: "监听",
    since: "持续", current_call: "当前通话", violations: "今日违规",
    listen: "监听", whisper: "耳语", barge: "强插", ack: "确认", resolve: "解除",
    waiting: "排队", transferring: "转接中", ended: "已结束", requested: "呼叫话机", active: "进行中",
    this_week: "本周", random: "随机监听", onsite: "现场监听", reviews_due: "待评分", samples: "抽检样本",
    run_sample: "抽取昨日样本", export_csv: "导出 CSV", call: "通话", direction: "方向", reasons: "原因",
    due: "截止", score: "得分", review: "评分", appeal: "申诉", inbound: "呼入", outbound: "呼出", special: "专项",
    reviewed: "已评分", appealed: "申诉中", rereviewed: "已复核", overdue: "已超时",
    score_help: "评分:态度 20、规范 30、技巧 50(扣分制),加分 ≤ 10,致命错误 0 分",
    bad_login: "用户名或密码错误", green: "绿", red: "红", none: "无", answered: "接通", abandoned: "放弃", offered: "进线",
  },
  en: {
    app: "Real-time call monitoring", login: "Log in", user: "User", password: "Password", logout: "Log out",
    wallboard: "Wallboard", console: "Supervisor console", qa: "Quality", offline: "offline", online: "live",
    calls_waiting: "Calls waiting", longest_wait_s: "Longest wait", service_level: "Service level",
    asa_s: "Avg speed of answer", aht_s: "Avg talk time", abandon_rate: "Abandon rate", in_answer_today: "Late answers today",
    out_hours_today: "Out-of-hours dials today", transfers_over_limit: "Transfers over limit",
    callbacks_due: "Callbacks due", callbacks_overdue: "Callbacks overdue",
    line_connect_rate: "Line connect rate (today)", inbound_short: "in", outbound_short: "out",
    available: "Available", ringing: "Ringing", talking: "Talking", wrapup: "Wrap-up", paused: "Paused",
    offline_agents: "Offline", live_calls: "Live calls", open_alerts: "Open alerts", agents: "Agents",
    commitments_due: "Commitments due", queue: "Queue", agent: "Agent", state: "State", time: "Time",
    caller: "Caller", actions: "Listen in", since: "For", current_call: "Current call", violations: "Violations today",
    listen: "Listen", whisper: "Whisper", barge: "Barge", ack: "Ack", resolve: "Resolve",
    waiting: "waiting", transferring: "transferring", ended: "ended", requested: "ringing your phone", active: "active",
    this_week: "This week", random: "Random monitoring", onsite: "On-site monitoring", reviews_due: "Reviews due",
    samples: "Samples", run_sample: "Sample yesterday", export_csv: "Export CSV", call: "Call", direction: "Direction",
    reasons: "Reasons", due: "Due", score: "Score", review: "Score", appeal: "Appeal", inbound: "inbound",
    outbound: "outbound", special: "special", reviewed: "scored", appealed: "appealed", rereviewed: "re-reviewed",
    overdue: "overdue", score_help: "Score card: attitude 20, norms 30, skills 50 (deductions), bonus ≤ 10, fatal error = 0",
    bad_login: "Wrong name or password", green: "green", red: "red", none: "none", answered: "answered", abandoned: "abandoned", offered: "offered",
  },
};

let lang = localStorage.getItem("rw_lang") || "zh";
let session = null;   // {name, role, teams, csrf}
let bearer = null;    // a wallboard token from the URL fragment (#token=...): never sent in a URL
const t = (k) => (I18N[lang][k] ?? I18N.zh[k] ?? k);
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid ?? "")));
  return e;
};

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  const b = $("#lang"); if (b) b.textContent = lang === "zh" ? "English" : "中文";
}

async function api(method, path, body) {
  const headers = {};
  if (bearer) headers.Authorization = "Bearer " + bearer;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const r = await fetch(path, {method, headers, credentials: "same-origin",
                               body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) { const err = new Error((data && data.message && data.message[lang]) || r.statusText); err.status = r.status; throw err; }
  return data;
}

function fmtS(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60), r = s % 60;
  return m ? `${m}:${String(r).padStart(2, "0")}` : `${r}s`;
}
const pct = (x) => (x === null || x === undefined ? "—" : (x * 100).toFixed(1) + "%");

// -- websocket with reconnect ------------------------------------------------------------------
function connect(onFrame, topics = []) {
  let delay = 500;
  const open = () => {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onopen = () => { delay = 500; if (bearer) ws.send(JSON.stringify({type: "auth", token: bearer})); };
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.type === "hello" && topics.length) ws.send(JSON.stringify({type: "subscribe", topics}));
      if (f.type === "hello") { const c = $("#conn"); if (c) { c.className = "conn on"; c.dataset.i18n = "online"; c.textContent = t("online"); } }
      onFrame(f);
    };
    ws.onclose = () => {
      const c = $("#conn"); if (c) { c.className = "conn off"; c.dataset.i18n = "offline"; c.textContent = t("offline"); }
      setTimeout(open, delay); delay = Math.min(delay * 2, 10000);
    };
  };
  open();
}

async function needSession() {
  try { session = await api("GET", "/api/v1/session"); }
  catch (e) { location.href = "/login?next=" + encodeURIComponent(location.pathname); throw e; }
  const me = $("#me"); if (me) me.textContent = `${session.name} (${session.role})`;
  const lo = $("#logout");
  if (lo) lo.addEventListener("click", async () => { await api("DELETE", "/api/v1/session"); location.href = "/login"; });
}

// -- login ---------------------------------------------------------------------------------------
function initLogin() {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/v1/session", {name: $("#name").value, password: $("#password").value});
      const next = new URLSearchParams(location.search).get("next");
      location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : "/console";
    } catch (e) { const p = $("#login-error"); p.hidden = false; p.textContent = e.status === 401 ? t("bad_login") : e.message; }
  });
}

// -- wallboard -----------------------------------------------------------------------------------
let lastKpi = null;
function renderKpi(k) {
  lastKpi = k;
  const v = k.values;
  const show = {calls_waiting: v.calls_waiting, longest_wait_s: fmtS(v.longest_wait_s), service_level: pct(v.service_level),
    asa_s: v.asa_s === null ? "—" : fmtS(v.asa_s), aht_s: v.aht_s === null || v.aht_s === undefined ? "—" : fmtS(v.aht_s),
    abandon_rate: pct(v.abandon_rate), in_answer_today: v.in_answer_today,
    out_hours_today: v.out_hours_today, transfers_over_limit: v.transfers_over_limit,
    callbacks_due: v.callbacks_due ?? "—", callbacks_overdue: v.callbacks_overdue ?? "—",
    line_connect_rate: v.line_connect_rate === null || v.line_connect_rate === undefined ? "—" : pct(v.line_connect_rate)};
  for (const [name, text] of Object.entries(show)) {
    const tile = $("#k-" + name); if (!tile) continue;
    tile.querySelector(".value").textContent = text;
    tile.className = "tile " + (k.colours[name] || "none");
    tile.dataset.raw = v[name] === null || v[name] === undefined ? "" : String(v[name]);
  }
  const th = k.thresholds.service_level;
  $("#sl-formula").textContent = `${k.service_level.formula[lang]}` +
    (th ? ` · ${t("green")} >${pct(th.amber)} · ${t("red")} ≤${pct(th.red)}` : "");
  const lc = k.line_connect, lcs = $("#line-counts");
  if (lcs) lcs.textContent = lc ? `${t("inbound_short")} ${lc.inbound.answered}/${lc.inbound.offered} · ` +
    `${t("outbound_short")} ${lc.outbound.answered}/${lc.outbound.attempted}` : "";
  $("#counts").textContent = `${t("offered")} ${k.counts.offered} · ${t("answered")} ${k.counts.answered} · ${t("abandoned")} ${k.counts.abandoned}`;
  $("#day").textContent = k.day;
  const bar = $("#agents"); bar.replaceChildren();
  for (const s of ["available", "ringing", "talking", "wrapup", "paused", "offline"]) {
    bar.append(el("div", {id: "a-" + s}, el("b", {}, k.agents[s] ?? 0), t(s === "offline" ? "offline_agents" : s)));
  }
}
async function initWallboard() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) bearer = decodeURIComponent(m[1]); else await needSession();
  try { renderKpi(await api("GET", "/api/v1/kpi")); } catch (_) { /* the websocket brings it */ }
  connect((f) => { if (f.type === "kpi") renderKpi(f); }, ["kpi"]);
}

// -- console -------------------------------------------------------------------------------------
const alerts = new Map();
const spies = new Map();
function renderAlerts() {
  const ul = $("#alerts"); ul.replaceChildren();
  const open = [...alerts.values()].filter((a) => a.state !== "resolved").reverse();
  if (!open.length) ul.append(el("li", {class: "acked"}, t("none")));
  for (const a of open) {
    const li = el("li", {"data-alert": a.id, "data-state": a.state, class: a.state + " " + a.severity},
      el("b", {}, a.rule), " ", a.text[lang] || a.text.zh, " ",
      el("span", {class: "muted"}, a.state === "acked" ? `✓ ${a.acked_by}` : ""));
    const act = el("div");
    if (a.state === "open") act.append(el("button", {class: "ack", onclick: () => changeAlert(a.id, "ack")}, t("ack")));
    act.append(el("button", {class: "resolve", onclick: () => changeAlert(a.id, "resolve")}, t("resolve")));
    li.append(act); ul.append(li);
  }
}
async function changeAlert(id, what) {
  try { const r = await api("POST", `/api/v1/alerts/${encodeURIComponent(id)}/${what}`); alerts.set(id, r.alert); renderAlerts(); }
  catch (e) { console.warn(e); }
}
function renderSpies() {
  const box = $("#spies"); box.replaceChildren();
  for (const s of spies.values()) {
    if (s.state === "ended" || s.state === "failed") continue;
    box.append(el("p", {class: "spy", "data-spy": s.id, "data-state": s.state},
      el("span", {class: "badge " + s.state}, t(s.state)), ` ${t(s.mode)} · ${s.agent} · ${s.call}`));
  }
}
async function spy(call, mode) {
  const p = $("#spy-error"); p.hidden = true;
  try { const r = await api("POST", `/api/v1/calls/${encodeURIComponent(call)}/spy`, {mode}); spies.set(r.spy.id, r.spy); renderSpies(); }
  catch (e) { p.hidden = false; p.textContent = e.message; }
}
async function refreshCalls() {
  const r = await api("GET", "/api/v1/calls");
  const tb = $("#calls tbody"); tb.replaceChildren();
  for (const c of r.calls) {
    const ring = c.ringing.length ? c.ringing[0] : null;
    const since = c.state === "talking" || c.state === "transferring" ? r.now - (c.answered_at ?? r.now)
      : ring ? ring.ring_s : c.waiting_s;
    const who = c.agent || (ring ? ring.agent : "");
    const act = el("td");
    if (c.state === "talking" && session.permissions.includes("calls:spy")) {
      for (const mode of ["listen", "whisper", "barge"]) {
        act.append(el("button", {class: "spy-" + mode, onclick: () => spy(c.id, mode)}, t(mode)));
      }
    }
    tb.append(el("tr", {"data-call": c.id}, el("td", {}, c.queue ?? "—"), el("td", {}, who || "—"),
      el("td", {class: "state-" + c.state}, t(c.state)), el("td", {}, fmtS(since)), el("td", {}, c.caller ?? ""), act));
  }
}
async function refreshAgents() {
  const r = await api("GET", "/api/v1/agents");
  const now = Date.now() / 1000, tb = $("#agents tbody"); tb.replaceChildren();
  const calls = await api("GET", "/api/v1/calls").catch(() => ({now: 0}));
  for (const a of r.agents) {
    tb.append(el("tr", {"data-agent": a.name}, el("td", {}, a.name), el("td", {}, t(a.state)),
      el("td", {}, fmtS((calls.now || 0) - a.since)), el("td", {}, a.current_call ?? ""), el("td", {}, a.violations_today)));
  }
  void now;
}
async function refreshCommitments() {
  const ul = $("#commitments");
  try {
    const r = await api("GET", "/api/v1/commitments?limit=20");
    ul.replaceChildren();
    const open = (r.commitments || []).filter((c) => c.state === "open" || c.state === "overdue");
    if (!open.length) ul.append(el("li", {class: "muted"}, t("none")));
    for (const c of open) ul.append(el("li", {}, `${c.due_local} · ${c.kind} · ${c.owner} · ${c.customer ?? ""}`,
      c.state === "overdue" ? el("span", {class: "error"}, " " + t("overdue")) : ""));
  } catch (_) { ul.replaceChildren(el("li", {class: "muted"}, "—")); }
}
async function initConsole() {
  await needSession();
  connect((f) => {
    if (f.type === "hello") { alerts.clear(); for (const a of f.open_alerts) alerts.set(a.id, a); renderAlerts(); }
    else if (f.type === "alert") { alerts.set(f.id, f); renderAlerts(); }
    else if (f.type === "spy") { spies.set(f.session.id, f.session); renderSpies(); }
  }, ["spy"]);
  const tick = async () => { try { await refreshCalls(); await refreshAgents(); } catch (e) { console.warn(e); } };
  await tick(); setInterval(tick, 1000);
  await refreshCommitments(); setInterval(refreshCommitments, 10000);
  try { for (const s of (await api("GET", "/api/v1/spy")).sessions) spies.set(s.id, s); renderSpies(); } catch (_) { /* no spy rights */ }
}

// -- QA ------------------------------------------------------------------------------------------
async function refreshQa() {
  const w = await api("GET", "/api/v1/qa/week");
  $("#week").textContent = w.week;
  const tb = $("#week-table tbody"); tb.replaceChildren();
  for (const a of w.agents) {
    tb.append(el("tr", {"data-agent": a.agent, class: a.below_quota ? "below" : ""}, el("td", {}, a.agent),
      el("td", {class: a.random < a.random_target ? "error" : ""}, `${a.random} / ${a.random_target}`),
      el("td", {class: a.onsite < a.onsite_target ? "error" : ""}, `${a.onsite} / ${a.onsite_target}`),
      el("td", {}, a.reviews_due + (a.reviews_overdue ? ` (${t("overdue")} ${a.reviews_overdue})` : ""))));
  }
  const s = await api("GET", "/api/v1/qa/samples");
  const sb = $("#samples tbody"); sb.replaceChildren();
  for (const x of s.samples) {
    const act = el("td");
    if (x.state === "due" || x.state === "appealed") {
      const inputs = ["attitude", "norms", "skills", "bonus"].map((k) => el("input", {size: 2, placeholder: k, "data-k": k}));
      act.append(...inputs, el("button", {onclick: async () => {
        const card = {}; for (const i of inputs) if (i.value) card[i.dataset.k] = Number(i.value);
        await api("POST", `/api/v1/qa/samples/${encodeURIComponent(x.call)}/review`, card); refreshQa();
      }}, t("review")));
    }
    sb.append(el("tr", {"data-call": x.call}, el("td", {}, x.call), el("td", {}, x.agent), el("td", {}, t(x.direction)),
      el("td", {}, x.reasons.map(t).join(", ")), el("td", {class: x.overdue ? "error" : ""}, x.due_local),
      el("td", {}, t(x.state)), el("td", {}, x.score ?? "—"), act));
  }
}
async function initQa() {
  await needSession();
  $("#run-sample").addEventListener("click", async () => { await api("POST", "/api/v1/qa/samples/run", {}); refreshQa(); });
  await refreshQa(); setInterval(() => refreshQa().catch(console.warn), 15000);
}

document.addEventListener("DOMContentLoaded", () => {
  applyLang();
  const b = $("#lang");
  if (b) b.addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("rw_lang", lang); applyLang();
    if (lastKpi) renderKpi(lastKpi);
    if ($("#alerts")) renderAlerts();
    if ($("#spies")) renderSpies();
  });
  const page = document.body.dataset.page;
  const init = {login: initLogin, wallboard: initWallboard, console: initConsole, qa: initQa}[page];
  if (init) Promise.resolve().then(init).catch((e) => console.warn(e));
});
