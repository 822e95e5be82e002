// A hand-written SVG line chart: a few series of (step, value) points, axes with round ticks, a legend.
// The SVG carries role="img", a label naming the latest values, and data-points (the number of points drawn).

const NS = "http://www.w3.org/2000/svg";
const W = 560, H = 230, PAD = { l: 52, r: 12, t: 28, b: 28 };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function ticks(lo, hi, n = 4) {
  if (hi === lo) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(10));
  return out;
}

const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : +v.toFixed(3));

/** Draw into the <svg> element `el`: series is [{name, points: [[step, value], …]}], maxX the last step. */
export function drawChart(el, title, series, maxX) {
  const shown = series.filter((s) => s.points.length);
  const all = shown.flatMap((s) => s.points);
  el.replaceChildren();
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("role", "img");
  el.setAttribute("data-points", String(all.length));
  const latest = shown.map((s) => `${s.name} ${fmt(s.points[s.points.length - 1][1])}`).join(", ");
  el.setAttribute("aria-label", all.length ? `${title}: ${all.length} points; latest ${latest}` : `${title}: no data yet`);
  if (!all.length) {
    el.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "Waiting for the first step…"));
    return;
  }
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const x1 = Math.max(maxX || 0, ...all.map((p) => p[0]), 1);
  const x = (v) => PAD.l + (v / x1) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - ((v - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
  for (const t of ticks(lo, hi)) {
    el.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(t), y2: y(t), class: "grid" }));
    el.append(svg("text", { x: PAD.l - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, fmt(t)));
  }
  for (const t of ticks(0, x1).filter(Number.isInteger)) {
    el.append(svg("text", { x: x(t), y: H - 8, "text-anchor": "middle", class: "tick" }, String(t)));
  }
  let legendX = PAD.l;
  shown.forEach((s, i) => {
    const pts = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    const line = svg("polyline", { points: pts, class: `series s${i}` });
    line.append(svg("title", {}, s.name));
    el.append(line);
    if (s.points.length === 1) el.append(svg("circle", { cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3, class: `dot s${i}` }));
    el.append(svg("text", { x: legendX, y: 14, class: `legend s${i}` }, `■ ${s.name}`));
    legendX += 7 * s.name.length + 28; // about 6 px a character at 11 px, plus the swatch and a gap
  });
}
