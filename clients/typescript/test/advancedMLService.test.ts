// node --test against a live `trademl serve` (started here on a free loopback port, stopped at
// the end) and small node:http servers that misbehave on purpose (5xx, silence, closed port).
//
// Needs TRADEML_MODEL_ROOT (a model store) and TRADEML_BIN (the `trademl` executable);
// tests/test_serve.py sets both. No shell anywhere: spawn() gets an argument array.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  dropStream, getAdvancedPrediction, MLServiceError, pushBar, type Bar, type MarketData,
} from "../src/advancedMLService.js";

const MODEL_ROOT = process.env.TRADEML_MODEL_ROOT;
const TRADEML_BIN = process.env.TRADEML_BIN ?? "trademl";
const TOKEN = "test-token-with-a-quote-'-inside";

const GUIDE_EXAMPLE: MarketData = {
  symbol: "NQZ5",
  timestamp: "2024-01-01T12:00:00Z",
  features: { close: 16500, volume: 1000, rsi: 45, dist_to_poc_ticks: 4 },
  position: 2,
  balance: 102000,
  unrealized_pnl: 500,
};

async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitHealthy(url: string, child: ChildProcess, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`trademl serve exited with ${child.exitCode}`);
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`trademl serve did not become healthy within ${ms} ms`);
}

/** A loopback server answering with `handler`; returns its URL and a counter of requests. */
async function fakeService(handler: http.RequestListener) {
  let hits = 0;
  const server = http.createServer((req, res) => {
    hits++;
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

describe("against a live trademl serve", { skip: MODEL_ROOT ? false : "TRADEML_MODEL_ROOT is not set" }, () => {
  let child: ChildProcess;
  let baseUrl: string;
  let stderr = "";

  before(async () => {
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    const logDir = mkdtempSync(join(tmpdir(), "trademl-ts-"));
    child = spawn(
      TRADEML_BIN,
      ["serve", "--host", "127.0.0.1", "--port", String(port), "--model-root", MODEL_ROOT!, "--log-dir", logDir],
      { env: { ...process.env, TRADEML_TOKEN: TOKEN }, stdio: ["ignore", "ignore", "pipe"] },
    );
    child.stderr!.on("data", (d) => (stderr += d));
    await waitHealthy(baseUrl, child, 30_000).catch((e) => {
      throw new Error(`${e.message}\n${stderr}`);
    });
  });

  after(() => {
    child.kill("SIGTERM");
  });

  test("the guide's example gives a valid prediction", async () => {
    const p = await getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl, token: TOKEN });
    assert.ok(["BUY", "SELL", "HOLD"].includes(p.ensemble_recommendation));
    assert.ok(p.confidence_score >= 0 && p.confidence_score <= 1);
    assert.ok(p.models_used.length >= 1);
    assert.equal(p.timestamp, "2024-01-01T12:00:00Z");
    for (const kind of p.models_used) assert.ok(p.model_versions?.[kind], `version of ${kind}`);
  });

  test("a malformed request is a typed 422 naming the field, not retried", async () => {
    const bad = { ...GUIDE_EXAMPLE, position: "two" } as unknown as MarketData;
    await assert.rejects(getAdvancedPrediction(bad, { baseUrl, token: TOKEN, retries: 3 }), (e: unknown) => {
      assert.ok(e instanceof MLServiceError);
      assert.equal(e.kind, "http");
      assert.equal(e.status, 422);
      assert.equal(e.field, "position");
      assert.equal(e.attempts, 1);
      return true;
    });
  });

  test("a quote in the input is just data (no shell)", async () => {
    const bad = { ...GUIDE_EXAMPLE, symbol: "'; rm -rf / #" } as MarketData;
    await assert.rejects(getAdvancedPrediction(bad, { baseUrl, token: TOKEN }), (e: unknown) => {
      assert.ok(e instanceof MLServiceError && e.status === 422 && e.field === "symbol");
      return true;
    });
  });

  test("pushBar streams bars: a retry gives the same answer, a changed bar is a 409 never retried", async () => {
    const bars: Bar[] = Array.from({ length: 30 }, (_, i) => {
      const close = 16500 + 0.25 * (i % 7);
      return {
        timestamp: new Date(Date.UTC(2024, 0, 2, 15, i)).toISOString(),
        open: close, high: close + 0.5, low: close - 0.5, close, volume: 100 + i, edge: 0,
      } as Bar;
    });
    const o = { baseUrl, token: TOKEN, retries: 3 };
    await pushBar({ symbol: "NQZ5", bars: bars.slice(0, 29) }, o);
    const last = bars[29]!;
    const answer = await pushBar({ symbol: "NQZ5", bars: [last] }, o);
    assert.equal(answer.timestamp, "2024-01-02T15:29:00Z");
    assert.deepEqual(await pushBar({ symbol: "NQZ5", bars: [last] }, o), answer);
    const changed = { ...last, close: last.close + 0.25 } as Bar;
    await assert.rejects(pushBar({ symbol: "NQZ5", bars: [changed] }, o), (e: unknown) => {
      assert.ok(e instanceof MLServiceError && e.status === 409 && e.serviceKind === "stream_conflict");
      assert.equal(e.attempts, 1);
      return true;
    });
    assert.equal(await dropStream("NQZ5", o), true);
    assert.equal(await dropStream("NQZ5", o), false);
  });

  test("a wrong token is a 401", async () => {
    await assert.rejects(getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl, token: "wrong" }), (e: unknown) => {
      assert.ok(e instanceof MLServiceError && e.status === 401 && e.serviceKind === "unauthorized");
      return true;
    });
  });
});

describe("failures reach the caller", () => {
  test("5xx is retried with backoff, then succeeds", async () => {
    let calls = 0;
    const svc = await fakeService((_req, res) => {
      calls++;
      if (calls < 3) {
        res.writeHead(503, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "warming up", field: null, kind: "no_model" } }));
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ timestamp: "t", models_used: ["lstm"], ensemble_recommendation: "SELL", confidence_score: 0.4 }));
    });
    try {
      const p = await getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl: svc.url, retries: 2, backoffMs: 5 });
      assert.equal(p.ensemble_recommendation, "SELL");
      assert.equal(svc.hits(), 3);
    } finally {
      await svc.close();
    }
  });

  test("5xx after every retry is an error, never a HOLD", async () => {
    const svc = await fakeService((_req, res) => {
      res.writeHead(500);
      res.end("boom");
    });
    try {
      await assert.rejects(getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl: svc.url, retries: 1, backoffMs: 1 }), (e: unknown) => {
        assert.ok(e instanceof MLServiceError && e.status === 500 && e.attempts === 2);
        return true;
      });
      assert.equal(svc.hits(), 2);
    } finally {
      await svc.close();
    }
  });

  test("a silent service times out", async () => {
    const svc = await fakeService(() => {
      // never answers
    });
    try {
      await assert.rejects(getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl: svc.url, timeoutMs: 50, retries: 1, backoffMs: 1 }), (e: unknown) => {
        assert.ok(e instanceof MLServiceError && e.kind === "timeout" && e.attempts === 2);
        return true;
      });
    } finally {
      await svc.close();
    }
  });

  test("a closed port is a network error", async () => {
    const port = await freePort();
    await assert.rejects(getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl: `http://127.0.0.1:${port}`, retries: 0 }), (e: unknown) => {
      assert.ok(e instanceof MLServiceError && e.kind === "network" && e.attempts === 1);
      return true;
    });
  });

  test("NaN or Infinity is refused before sending, naming the field (never sent as null)", async () => {
    let requests = 0;
    const svc = await fakeService((_req, res) => {
      requests++;
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
    try {
      const cases: [MarketData, string][] = [
        [{ ...GUIDE_EXAMPLE, features: { rsi: Number.NaN } }, "features.rsi"],
        [{ ...GUIDE_EXAMPLE, unrealized_pnl: Number.POSITIVE_INFINITY }, "unrealized_pnl"],
        [{ ...GUIDE_EXAMPLE, sequence: [[1, 2], [3, Number.NEGATIVE_INFINITY]] }, "sequence[1][1]"],
      ];
      for (const [request, field] of cases) {
        await assert.rejects(getAdvancedPrediction(request, { baseUrl: svc.url }), (e: unknown) => {
          assert.ok(e instanceof MLServiceError && e.kind === "invalid_request" && e.field === field, String(e));
          assert.ok(!e.retryable && e.attempts === 0);
          return true;
        });
      }
      assert.equal(requests, 0);
    } finally {
      await svc.close();
    }
  });

  test("a 200 without a prediction is an invalid_response", async () => {
    const svc = await fakeService((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ ensemble_recommendation: "MAYBE" }));
    });
    try {
      await assert.rejects(getAdvancedPrediction(GUIDE_EXAMPLE, { baseUrl: svc.url }), (e: unknown) => {
        assert.ok(e instanceof MLServiceError && e.kind === "invalid_response");
        return true;
      });
    } finally {
      await svc.close();
    }
  });
});
