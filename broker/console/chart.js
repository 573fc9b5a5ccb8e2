// Live time-series charts drawn in SVG: a fixed time window sliding with the newest sample,
// smooth (monotone cubic) lines, a filled area under the first series, nice y-axis ticks,
// time labels, a legend with the latest values and a hover crosshair with a tooltip.

const SVG_NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#12877a', '#5468d4', '#d98a1c', '#c8506a', '#8a55c4', '#2f8fcf', '#6b8e23'];

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

function r(n) {
  return Math.round(n * 10) / 10;
}

/** Evenly spaced ticks from 0 that cover `max`, with a "nice" step (1, 2, 2.5, 5 x 10^k). */
export function niceTicks(max, count = 4, integer = false) {
  if (!(max > 0)) max = integer ? count : 1;
  let step = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(step));
  const norm = step / magnitude;
  step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
  if (integer) step = Math.max(1, Math.ceil(step));
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let value = 0; value <= top + step / 2; value += step) ticks.push(value);
  return { top, ticks };
}

/** A smooth path through the points that never overshoots (Fritsch–Carlson monotone cubic). */
export function smoothPath(points) {
  const n = points.length;
  if (n === 0) return '';
  if (n === 1) return `M${r(points[0][0])},${r(points[0][1])}`;
  const dx = [];
  const slope = [];
  for (let i = 0; i < n - 1; i++) {
    dx[i] = points[i + 1][0] - points[i][0];
    slope[i] = dx[i] ? (points[i + 1][1] - points[i][1]) / dx[i] : 0;
  }
  const tangent = [slope[0]];
  for (let i = 1; i < n - 1; i++) {
    tangent[i] = slope[i - 1] * slope[i] <= 0 ? 0 : (slope[i - 1] + slope[i]) / 2;
  }
  tangent[n - 1] = slope[n - 2];
  for (let i = 0; i < n - 1; i++) {
    if (slope[i] === 0) {
      tangent[i] = 0;
      tangent[i + 1] = 0;
      continue;
    }
    const a = tangent[i] / slope[i];
    const b = tangent[i + 1] / slope[i];
    const length = a * a + b * b;
    if (length > 9) {
      const k = 3 / Math.sqrt(length);
      tangent[i] = k * a * slope[i];
      tangent[i + 1] = k * b * slope[i];
    }
  }
  let d = `M${r(points[0][0])},${r(points[0][1])}`;
  for (let i = 0; i < n - 1; i++) {
    const h = dx[i] / 3;
    const [x0, y0] = points[i];
    const [x1, y1] = points[i + 1];
    d += `C${r(x0 + h)},${r(y0 + tangent[i] * h)} ${r(x1 - h)},${r(y1 - tangent[i + 1] * h)} ${r(x1)},${r(y1)}`;
  }
  return d;
}

function clock(ms) {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

let gradientIds = 0;

export class LiveChart {
  /**
   * @param {object} options
   * @param {string} options.id          the svg's id (and data-test)
   * @param {string} options.title
   * @param {(v:number)=>string} options.format  a value as the axis and legend show it
   * @param {Array<{key:string,label:string}>} options.series
   * @param {boolean} [options.integer]  values are counts (integer ticks)
   * @param {number} [options.windowMs]  the time span shown
   */
  constructor({ id, title, format, series, integer = false, windowMs = 120_000, height = 210 }) {
    this.id = id;
    this.format = format;
    this.integer = integer;
    this.windowMs = windowMs;
    this.height = height;
    this.samples = [];
    this.colors = new Map();
    this.series = [];
    this.hoverX = null;
    this.gradient = `chart-fill-${++gradientIds}`;

    this.el = document.createElement('section');
    this.el.className = 'card chart-card';
    const head = document.createElement('div');
    head.className = 'chart-head';
    const h = document.createElement('h3');
    h.textContent = title;
    this.legend = document.createElement('div');
    this.legend.className = 'legend';
    this.legend.dataset.test = `${id}-legend`;
    head.append(h, this.legend);
    this.body = document.createElement('div');
    this.body.className = 'chart-body';
    this.svg = svg('svg', { id, 'data-test': id, class: 'chart', height, role: 'img', 'aria-label': title });
    this.tooltip = document.createElement('div');
    this.tooltip.className = 'chart-tooltip';
    this.tooltip.hidden = true;
    this.body.append(this.svg, this.tooltip);
    this.el.append(head, this.body);

    this.svg.addEventListener('mousemove', (event) => {
      const box = this.svg.getBoundingClientRect();
      this.hoverX = event.clientX - box.left;
      this.render();
    });
    this.svg.addEventListener('mouseleave', () => {
      this.hoverX = null;
      this.render();
    });
    this.resize = new ResizeObserver(() => this.render());
    this.resize.observe(this.body);
    this.setSeries(series);
  }

  /** Changes the series shown; a series keeps its color for as long as the chart lives. */
  setSeries(series) {
    for (const s of series) {
      if (!this.colors.has(s.key)) this.colors.set(s.key, PALETTE[this.colors.size % PALETTE.length]);
    }
    const same =
      series.length === this.series.length && series.every((s, i) => s.key === this.series[i].key);
    this.series = series.map((s) => ({ ...s, color: this.colors.get(s.key) }));
    if (!same) this.renderLegend();
  }

  push(time, values) {
    this.samples.push({ t: time, v: values });
    const oldest = time - this.windowMs - 10_000;
    while (this.samples.length > 2 && this.samples[1].t < oldest) this.samples.shift();
    this.render();
  }

  dispose() {
    this.resize.disconnect();
  }

  renderLegend() {
    this.legend.replaceChildren();
    this.legendValues = new Map();
    for (const s of this.series) {
      const item = document.createElement('span');
      item.className = 'legend-item';
      item.dataset.series = s.key;
      const swatch = document.createElement('i');
      swatch.style.background = s.color;
      const label = document.createElement('span');
      label.textContent = s.label;
      const value = document.createElement('b');
      value.textContent = '—';
      item.append(swatch, label, value);
      this.legend.append(item);
      this.legendValues.set(s.key, value);
    }
  }

  render() {
    const width = Math.max(240, Math.floor(this.body.clientWidth || 560));
    const height = this.height;
    const m = { left: 58, right: 14, top: 12, bottom: 26 };
    const x0 = m.left;
    const x1 = width - m.right;
    const y0 = m.top;
    const y1 = height - m.bottom;
    const root = this.svg;
    root.setAttribute('width', width);
    root.setAttribute('viewBox', `0 0 ${width} ${height}`);
    root.dataset.points = String(this.samples.length);
    root.replaceChildren();

    const last = this.samples[this.samples.length - 1];
    const now = last ? last.t : Date.now();
    // The window grows with the samples up to its full span, so the first minute is not a
    // few dots at the right edge.
    const span = last ? now - this.samples[0].t : 0;
    const windowMs = Math.min(this.windowMs, Math.max(20_000, span));
    const start = now - windowMs;
    const visible = this.samples.filter((sample) => sample.t >= start - 5000);
    let max = 0;
    for (const sample of visible) {
      for (const s of this.series) {
        const value = sample.v[s.key];
        if (Number.isFinite(value) && value > max) max = value;
      }
    }
    const { top, ticks } = niceTicks(max * 1.08, 4, this.integer);
    const sx = (t) => x0 + ((t - start) / windowMs) * (x1 - x0);
    const sy = (v) => y1 - (v / top) * (y1 - y0);

    const defs = svg('defs');
    const gradient = svg('linearGradient', { id: this.gradient, x1: 0, y1: 0, x2: 0, y2: 1 });
    const firstColor = this.series[0]?.color ?? PALETTE[0];
    gradient.append(
      svg('stop', { offset: '0%', 'stop-color': firstColor, 'stop-opacity': 0.28 }),
      svg('stop', { offset: '100%', 'stop-color': firstColor, 'stop-opacity': 0.02 }),
    );
    const clip = svg('clipPath', { id: `${this.gradient}-clip` });
    clip.append(svg('rect', { x: x0, y: y0 - 4, width: x1 - x0, height: y1 - y0 + 8 }));
    defs.append(gradient, clip);
    root.append(defs);

    // Grid and y axis.
    const grid = svg('g', { class: 'grid' });
    for (const tick of ticks) {
      const y = r(sy(tick));
      grid.append(svg('line', { x1: x0, x2: x1, y1: y, y2: y, class: tick === 0 ? 'axis' : '' }));
      const label = svg('text', { x: x0 - 8, y: y + 4, 'text-anchor': 'end', class: 'tick' });
      label.textContent = this.format(tick);
      grid.append(label);
    }
    // Time axis: a label every 5 s to 1 min, at most 5 of them.
    const every = [5_000, 10_000, 15_000, 30_000, 60_000, 120_000].find((step) => windowMs / step <= 5) ?? 300_000;
    for (let t = Math.ceil(start / every) * every; t <= now; t += every) {
      const x = r(sx(t));
      grid.append(svg('line', { x1: x, x2: x, y1: y1, y2: y1 + 4, class: 'axis' }));
      const label = svg('text', { x, y: height - 7, 'text-anchor': 'middle', class: 'tick' });
      label.textContent = clock(t);
      grid.append(label);
    }
    root.append(grid);

    const plot = svg('g', { 'clip-path': `url(#${this.gradient}-clip)` });
    root.append(plot);
    this.series.forEach((s, index) => {
      const points = visible
        .filter((sample) => Number.isFinite(sample.v[s.key]))
        .map((sample) => [sx(sample.t), sy(sample.v[s.key])]);
      const d = smoothPath(points);
      if (index === 0 && points.length > 1) {
        const area = `${d}L${r(points[points.length - 1][0])},${y1}L${r(points[0][0])},${y1}Z`;
        plot.append(svg('path', { d: area, fill: `url(#${this.gradient})`, class: 'area' }));
      }
      plot.append(
        svg('path', {
          d,
          class: 'line',
          stroke: s.color,
          'data-series': s.key,
          'data-n': points.length,
        }),
      );
      if (points.length) {
        const [px, py] = points[points.length - 1];
        plot.append(svg('circle', { cx: r(px), cy: r(py), r: 3.2, fill: s.color, class: 'dot' }));
      }
      const value = last?.v[s.key];
      const legendValue = this.legendValues?.get(s.key);
      if (legendValue) legendValue.textContent = Number.isFinite(value) ? this.format(value) : '—';
    });

    if (this.samples.length < 2) {
      const note = svg('text', { x: (x0 + x1) / 2, y: (y0 + y1) / 2, 'text-anchor': 'middle', class: 'chart-note' });
      note.textContent = 'Collecting samples…';
      root.append(note);
    }

    this.renderHover({ sx, sy, x0, x1, y0, y1, visible, root });
  }

  renderHover({ sx, sy, x0, x1, y0, y1, visible, root }) {
    if (this.hoverX == null || this.hoverX < x0 || this.hoverX > x1 || visible.length === 0) {
      this.tooltip.hidden = true;
      return;
    }
    let nearest = visible[0];
    for (const sample of visible) {
      if (Math.abs(sx(sample.t) - this.hoverX) < Math.abs(sx(nearest.t) - this.hoverX)) nearest = sample;
    }
    const x = r(sx(nearest.t));
    root.append(svg('line', { x1: x, x2: x, y1: y0, y2: y1, class: 'crosshair' }));
    const rows = [];
    for (const s of this.series) {
      const value = nearest.v[s.key];
      if (!Number.isFinite(value)) continue;
      root.append(svg('circle', { cx: x, cy: r(sy(value)), r: 4, fill: '#fff', stroke: s.color, 'stroke-width': 2 }));
      rows.push([s, value]);
    }
    this.tooltip.replaceChildren();
    const time = document.createElement('div');
    time.className = 'tt-time';
    time.textContent = clock(nearest.t);
    this.tooltip.append(time);
    for (const [s, value] of rows) {
      const row = document.createElement('div');
      const swatch = document.createElement('i');
      swatch.style.background = s.color;
      const label = document.createElement('span');
      label.textContent = s.label;
      const b = document.createElement('b');
      b.textContent = this.format(value);
      row.append(swatch, label, b);
      this.tooltip.append(row);
    }
    this.tooltip.hidden = false;
    const width = this.tooltip.offsetWidth || 140;
    const left = x + 12 + width > x1 ? x - 12 - width : x + 12;
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${y0 + 4}px`;
  }
}
