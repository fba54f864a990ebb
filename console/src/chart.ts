// One sensor's chart: min/avg/max per bucket as a band around the mean.
// The points plotted are on the element (`data-points`, the API's own
// values) so that a test can compare them with `sensorMetrics`.
import uPlot from 'uplot';
import { h } from './dom';

export type Bucket = { time: string; min_value: number; avg_value: number; max_value: number; reading_count: number };

export function sensorChart(sensor: string, unit: string | null) {
  const plot = h('div', { class: 'plot' });
  const note = h('p', { class: 'muted chart-note' });
  const el = h('figure', { class: 'chart', 'data-sensor': sensor },
    h('figcaption', {}, `${sensor}${unit ? ` (${unit})` : ''}`), plot, note);
  let buckets: Bucket[] = [];
  let u: uPlot | null = null;

  const data = (): uPlot.AlignedData => [
    buckets.map((b) => Date.parse(b.time) / 1000),
    buckets.map((b) => b.max_value),
    buckets.map((b) => b.avg_value),
    buckets.map((b) => b.min_value),
  ];

  function width(): number {
    return Math.max(200, Math.floor(plot.clientWidth || el.clientWidth || 300));
  }

  function draw() {
    el.dataset.points = JSON.stringify(buckets.map((b) => [b.time, b.min_value, b.avg_value, b.max_value]));
    note.textContent = buckets.length ? `${buckets.length} buckets, ${buckets.reduce((n, b) => n + b.reading_count, 0)} readings` : 'No readings in this range.';
    if (!u) {
      u = new uPlot({
        width: width(),
        height: 220,
        series: [
          {},
          { label: 'max', stroke: 'rgba(37,99,235,0.5)', width: 1 },
          { label: 'avg', stroke: '#1d4ed8', width: 2 },
          { label: 'min', stroke: 'rgba(37,99,235,0.5)', width: 1 },
        ],
        bands: [{ series: [1, 3], fill: 'rgba(37,99,235,0.12)' }],
        axes: [{}, { size: 50 }],
        legend: { live: true },
      }, data(), plot);
    } else {
      u.setData(data());
    }
  }

  const resize = new ResizeObserver(() => u?.setSize({ width: width(), height: 220 }));
  resize.observe(el);

  return {
    el,
    set(list: Bucket[]) { buckets = list.slice(); draw(); },
    /** A bucket from the live stream: replaces the one of its time, or
     * extends the chart. */
    live(b: Bucket, start: string) {
      if (Date.parse(b.time) < Date.parse(start)) return;
      const i = buckets.findIndex((x) => Date.parse(x.time) === Date.parse(b.time));
      if (i >= 0) buckets[i] = { ...b, time: buckets[i].time };
      else { buckets.push(b); buckets.sort((a, c) => Date.parse(a.time) - Date.parse(c.time)); }
      draw();
    },
    destroy() { resize.disconnect(); u?.destroy(); },
  };
}
