// Cairn's web app, the little script there is: it keeps a run's page current from the run's event
// stream, without a reload. Pages are rendered on the server and work without this file; it only
// follows the stream and asks the server for the parts of the page that changed.
//
// Rules: nothing received is ever parsed as HTML except the server's own rendering of the page
// (/runs/<id>/live, escaped and sanitised there); text from events goes in with textContent, and a
// link only ever points at an http(s) URL. A dropped stream or a restarted server is picked up again
// after the last event id read, so nothing is missed and nothing is applied twice out of order.

const TERMINAL = new Set(["done", "aborted", "failed"]);
const EVENTS = ["phase", "plan", "step_started", "step_finished", "tool_call", "spend", ...TERMINAL];

const main = document.querySelector("main[data-run]");
if (main) follow(main.dataset.run);

function follow(runId) {
  const base = `/runs/${encodeURIComponent(runId)}`;
  const served = new Map(); // id of a [data-live] part -> its HTML as the server last sent it
  const sources = new Map(); // key -> {title, href}
  let last = 0; // the id of the last event applied
  let stream = null;
  let ended = false;
  let timer = null;
  let busy = false;
  let again = false;
  let retry = 500;

  remember(document);

  function remember(root) {
    root.querySelectorAll("[data-live]").forEach((el) => served.set(el.id, el.outerHTML));
  }

  function connect() {
    // A new EventSource cannot send Last-Event-ID itself; `after` says the same.
    stream = new EventSource(`${base}/events?after=${last}`);
    for (const type of EVENTS) stream.addEventListener(type, onEvent);
    stream.onopen = () => { retry = 500; };
    stream.onerror = () => {
      // CONNECTING: the browser retries by itself with Last-Event-ID. CLOSED: it gave up (the
      // server answered with an error while restarting, or 204 at the end); start again ourselves.
      if (stream.readyState === EventSource.CLOSED && !ended) {
        stream.close();
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 5000);
      }
    };
  }

  function onEvent(event) {
    const id = Number(event.lastEventId);
    if (id && id <= last) return; // Already applied.
    if (id) last = id;
    main.dataset.lastEvent = String(last); // What the page has applied, for anyone checking.
    let data = {};
    try { data = JSON.parse(event.data); } catch { data = {}; }
    if (event.type === "tool_call" && data.tool) {
      const tool = data.tool;
      setText("activity", `${stepTitle(tool.step_id)}: ${tool.tool} ${tool.detail || ""}`.trim());
    }
    if ((event.type === "step_started" || event.type === "step_finished") && data.step) {
      setText("activity", `${data.step.title}: ${event.type === "step_started" ? "started" : data.step.status}`);
    }
    if (event.type === "phase" && data.phase && data.phase !== "researching") {
      setText("activity", data.phase.replace("_", " "));
    }
    if (event.type === "step_finished" && Array.isArray(data.sources)) addSources(data.sources);
    if (TERMINAL.has(event.type)) {
      ended = true;
      stream.close();
      setText("activity", "—");
    }
    if (event.type !== "tool_call") schedule();
  }

  function stepTitle(stepId) {
    const el = document.querySelector(`[data-step="${CSS.escape(String(stepId))}"] .title`);
    return el ? el.textContent : String(stepId);
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function addSources(list) {
    for (const s of list) {
      const key = s.url || s.path || s.title;
      if (!key || sources.has(key)) continue;
      // As render.source_href: a web page opens at its URL (http(s) only), one of the tenant's
      // documents at its page here, a finding from the tenant's library at the run that found it.
      let href = null;
      if (s.url && /^https?:\/\//i.test(s.url)) href = s.url;
      else if (s.path && s.via !== "library") href = `/documents?path=${encodeURIComponent(s.path)}`;
      else if (s.path && s.path.startsWith("finding:")) {
        const run = s.path.slice("finding:".length).split("/")[0];
        if (run) href = `/runs/${encodeURIComponent(run)}`;
      }
      sources.set(key, { title: s.title || key, href });
    }
    const ul = document.getElementById("sources");
    if (!ul) return;
    const shown = new Set([...ul.children].map((li) => li.dataset.key));
    for (const [key, s] of sources) {
      if (shown.has(key)) continue;
      const li = document.createElement("li");
      li.dataset.key = key;
      if (s.href) {
        const a = document.createElement("a");
        a.href = s.href;
        a.rel = "noopener noreferrer";
        a.textContent = s.title;
        li.append(a);
      } else {
        li.textContent = s.title;
      }
      ul.append(li);
    }
  }

  function schedule(delay = 150) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const answer = await fetch(`${base}/live`, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (answer.redirected && new URL(answer.url).pathname === "/signin") {
        location.assign(answer.url); // The session ended: sign in again, then come back here.
        return;
      }
      if (!answer.ok) throw new Error(`live ${answer.status}`);
      const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
      apply(doc.getElementById("panel"));
    } catch {
      schedule(1500); // The server is restarting or busy: ask again shortly.
    } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  }

  function apply(next) {
    const panel = document.getElementById("panel");
    if (!next || !panel) return;
    const focused = document.activeElement && document.activeElement.id;
    const d = next.dataset;
    const p = panel.dataset;
    if (d.view !== p.view || (d.view === "review" && d.version !== p.version) ||
        (d.view === "ended" && d.report !== p.report)) {
      const adopted = document.adoptNode(next);
      panel.replaceWith(adopted);
      served.clear();
      remember(adopted);
      addSources([]);
    } else {
      next.querySelectorAll("[data-live]").forEach((el) => {
        const current = document.getElementById(el.id);
        if (current && served.get(el.id) !== el.outerHTML) {
          served.set(el.id, el.outerHTML);
          current.replaceWith(document.adoptNode(el));
        }
      });
    }
    if (focused && document.activeElement === document.body) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
    if (d.view === "ended" && d.report === "pending") schedule(1000);
  }

  connect();
}
