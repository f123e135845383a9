// Idle hold for k6: every VU holds one WebSocket and pings every 10 s; VUs step up through
// the STEPS (comma-separated user counts), each held HOLD seconds, the last one LAST seconds.
import { WebSocket } from 'k6/experimental/websockets';

const steps = __ENV.STEPS.split(',').map(Number);
const stages = [];
steps.forEach((n, i) => {
  stages.push({ duration: '5s', target: n });
  stages.push({ duration: (i === steps.length - 1 ? __ENV.LAST : __ENV.HOLD) + 's', target: n });
});

export const options = {
  scenarios: { hold: { executor: 'ramping-vus', startVUs: 0, stages, gracefulRampDown: '0s' } },
  summaryTrendStats: ['p(50)', 'p(99)'],
};

export default function () {
  const ws = new WebSocket(__ENV.URL);
  ws.onopen = () => {
    const timer = setInterval(() => ws.ping(), 10000);
    ws.onclose = () => clearInterval(timer);
  };
  ws.onerror = () => ws.close();
}
