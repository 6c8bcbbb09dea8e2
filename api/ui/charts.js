// Small hand-drawn SVG charts: line curves (loss, accuracy over steps) and bars (report stages).

const NS = "http://www.w3.org/2000/svg";
const W = 480, H = 220, PAD = { left: 52, right: 12, top: 24, bottom: 28 };
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

function extent(values) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!Number.isFinite(lo)) return [0, 1];
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  return [lo, hi];
}

function short(x) {
  return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(1) : Number(x.toPrecision(3));
}

/** A line chart that redraws as points arrive: ``chart.add(series, x, y)``. */
export function lineChart(title) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-points": 0 });
  root.append(svg("title", {}, title));
  const series = new Map();
  let pending = false;

  function draw() {
    pending = false;
    root.replaceChildren(svg("title", {}, title));
    root.append(svg("text", { x: PAD.left, y: 15, class: "chart-title" }, title));
    const all = [...series.values()].flat();
    root.setAttribute("data-points", all.length);
    if (all.length === 0) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no data yet"));
      return;
    }
    const [x0, x1] = extent(all.map((p) => p[0]));
    const [y0, y1] = extent(all.map((p) => p[1]));
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
    const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    root.append(svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }));
    root.append(svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: "axis" }));
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      root.append(svg("text", { x: PAD.left - 4, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, short(y)));
    }
    for (const x of [x0, x1]) {
      root.append(svg("text", { x: sx(x), y: H - 8, "text-anchor": "middle", class: "tick" }, short(x)));
    }
    let i = 0;
    for (const [name, points] of series) {
      const color = COLORS[i % COLORS.length];
      const path = points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { points: path, fill: "none", stroke: color, "stroke-width": 2, "data-series": name }));
      root.append(svg("text", { x: W - PAD.right - 110, y: PAD.top + 12 * (i + 1), fill: color, class: "legend" }, name));
      i += 1;
    }
  }

  draw();
  return {
    element: root,
    add(name, x, y) {
      if (typeof x !== "number" || typeof y !== "number" || !Number.isFinite(y)) return;
      if (!series.has(name)) series.set(name, []);
      series.get(name).push([x, y]);
      if (!pending) { pending = true; requestAnimationFrame(draw); }
    },
  };
}

/** A bar chart of one value per label. */
export function barChart(title, labels, values, format = short) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  root.append(svg("title", {}, title));
  root.append(svg("text", { x: PAD.left, y: 15, class: "chart-title" }, title));
  const present = values.filter((v) => typeof v === "number");
  const hi = present.length ? Math.max(...present, 0) : 1;
  const slot = (W - PAD.left - PAD.right) / Math.max(1, labels.length);
  labels.forEach((label, i) => {
    const v = values[i];
    const x = PAD.left + i * slot + slot * 0.15;
    const height = typeof v === "number" && hi > 0 ? (v / hi) * (H - PAD.top - PAD.bottom - 14) : 0;
    root.append(svg("rect", { x, y: H - PAD.bottom - height, width: slot * 0.7, height, fill: COLORS[0], class: "bar" }));
    root.append(svg("text", { x: x + slot * 0.35, y: H - PAD.bottom - height - 4, "text-anchor": "middle", class: "tick" },
      typeof v === "number" ? format(v) : "n/a"));
    root.append(svg("text", { x: x + slot * 0.35, y: H - 8, "text-anchor": "middle", class: "tick" }, label));
  });
  root.append(svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }));
  return root;
}
