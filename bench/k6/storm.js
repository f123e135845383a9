// Connect storm for k6: N VUs connect at once and hold until HOLD seconds have passed.
import { WebSocket } from 'k6/experimental/websockets';

export const options = {
  scenarios: { storm: { executor: 'per-vu-iterations', vus: Number(__ENV.N), iterations: 1, maxDuration: '120s' } },
};

export default function () {
  const ws = new WebSocket(__ENV.URL);
  ws.onopen = () => setTimeout(() => ws.close(), Number(__ENV.HOLD) * 1000);
  ws.onerror = () => ws.close();
}
