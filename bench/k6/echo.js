// Message load for k6: VUS users each send RATE messages per second to an echo server for
// DURATION seconds and time each echo.
import { WebSocket } from 'k6/experimental/websockets';
import { Counter, Trend } from 'k6/metrics';

const rtt = new Trend('echo_rtt', true);
const echoed = new Counter('echoes');

export const options = {
  scenarios: {
    echo: { executor: 'per-vu-iterations', vus: Number(__ENV.VUS), iterations: 1, maxDuration: (Number(__ENV.DURATION) + 30) + 's' },
  },
  summaryTrendStats: ['p(50)', 'p(99)'],
};

export default function () {
  const ws = new WebSocket(__ENV.URL);
  const pad = 'x'.repeat(64);
  ws.onopen = () => {
    const sender = setInterval(() => ws.send(JSON.stringify({ t: Date.now(), p: pad })), 1000 / Number(__ENV.RATE));
    setTimeout(() => { clearInterval(sender); ws.close(); }, Number(__ENV.DURATION) * 1000);
  };
  ws.onmessage = (event) => {
    const sent = JSON.parse(event.data).t;
    rtt.add(Date.now() - sent);
    echoed.add(1);
  };
}
