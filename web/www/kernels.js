// The in-browser kernel harness: runs the engine's kernel self-test on this browser's adapter and
// shows each check. Tests read `window.kernelResults`.
import { Sovereign } from './sovereign.js';

async function main() {
  const summary = document.getElementById('summary');
  try {
    const engine = await Sovereign.create();
    const started = performance.now();
    const checks = await engine.kernelChecks();
    const body = document.querySelector('#results tbody');
    for (const c of checks) {
      const row = document.createElement('tr');
      for (const value of [c.name, c.max_error.toExponential(2), c.tolerance.toExponential(2), c.passed ? 'pass' : 'FAIL']) {
        const cell = document.createElement('td');
        cell.textContent = value;
        row.append(cell);
      }
      body.append(row);
    }
    const failed = checks.filter((c) => !c.passed).length;
    const adapter = engine.adapter;
    summary.textContent = `${checks.length - failed} of ${checks.length} checks passed on ` +
      `${adapter.name || [adapter.vendor, adapter.architecture].filter(Boolean).join(' ') || 'this adapter'} ` +
      `in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    engine.terminate();
    return { adapter, checks };
  } catch (error) {
    summary.textContent = `the checks could not run: ${error.message}`;
    return { error: { message: error.message, code: error.code ?? null } };
  }
}

window.kernelResults = main();
