// Runs the admin page's script (argv[2]) against a live controller (argv[3],
// token argv[4]) inside a minimal DOM, then clicks the elements named by the
// rest of argv in turn (awaiting each handler's promise), then prints what it
// rendered as JSON.
// Only what the page uses is emulated: elements, table rows, SVG elements.
"use strict";
const [script, base, token] = process.argv.slice(2);
class El {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.style = {}; this._text = ""; this.value = ""; }
  appendChild(c) { this.children.push(c); if (this.tag === "select" && this.value === "") this.value = c.value; return c; }
  replaceChildren() { this.children = []; this.value = ""; }
  setAttribute(k, v) { this.attrs[k] = v; }
  set textContent(t) { this._text = String(t); }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  insertRow() {
    const row = new El("tr");
    row.insertCell = () => row.appendChild(new El("td"));
    return this.appendChild(row);
  }
  addEventListener(type, handler) { (this.listeners ||= {})[type] = handler; }
  all(tag) { return (this.tag === tag ? [this] : []).concat(...this.children.map((c) => c.all(tag))); }
}
const elements = {};
global.document = {
  getElementById: (id) => (elements[id] ||= new El(id === "task" || id === "usage-vm" ? "select" : "div")),
  createElement: (tag) => new El(tag),
  createElementNS: (_, tag) => new El(tag),
  createTextNode: (text) => { const el = new El("#text"); el.textContent = text; return el; },
};
global.location = { hash: "#token=" + token, pathname: "/" };
global.history = { replaceState() {} };
const storage = {};
global.sessionStorage = { getItem: (k) => storage[k] ?? null, setItem: (k, v) => { storage[k] = v; } };
const realFetch = fetch;
global.fetch = (path, options) => realFetch(base + path, options);
global.setInterval = () => {};
require(script);
const clicks = process.argv.slice(5);
setTimeout(async () => {
  for (const id of clicks) {
    const handler = elements[id] && elements[id].listeners && elements[id].listeners.click;
    if (!handler) throw new Error("nothing to click: " + id);
    await handler();
  }
  const rows = (id) => (elements[id] ? elements[id].children.map((r) => r.children.map((c) => c.textContent)) : null);
  const chart = (id) => {
    const el = elements[id];
    if (!el) return null;
    return {
      polylines: el.all("polyline").map((p) => p.attrs.points.split(" ").length),
      points: el.all("circle").map((c) => c.all("title")[0].textContent),
    };
  };
  console.log(JSON.stringify({
    error: elements.error ? elements.error.textContent : null,
    whoami: elements.whoami ? elements.whoami.textContent : null,
    usage: rows("usage"),
    platforms: rows("platforms"),
    points: rows("points"),
    vms: rows("vms"),
    results: rows("results"),
    events: rows("events"),
    older_events_hidden: elements["older-events"] ? elements["older-events"].hidden : null,
    legend: elements.legend ? elements.legend.children.map((c) => c.textContent) : null,
    loss: chart("chart-loss"),
    delay: chart("chart-delay"),
    jitter: chart("chart-jitter"),
    vm_cpu: chart("chart-vm-cpu"),
    vm_memory: chart("chart-vm-memory"),
    vm_network: chart("chart-vm-network"),
    treeinfo: elements.treeinfo ? elements.treeinfo.textContent : null,
    tree: elements.tree ? {
      links: elements.tree.all("line").map((l) => ({ stroke: l.attrs.stroke, width: l.attrs["stroke-width"], title: l.all("title")[0].textContent })),
      labels: elements.tree.all("text").map((t) => t.textContent),
    } : null,
  }));
  process.exit(0);
}, 3000);
