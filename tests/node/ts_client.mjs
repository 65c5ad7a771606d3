#!/usr/bin/env node
// The official TypeScript SDK client (@modelcontextprotocol/sdk 1.x) driving one scenario against an MCP
// server, printing exactly one JSON object on stdout (diagnostics go to stderr).
//
// Usage:
//   node ts_client.mjs (--url URL [--header "Name: value"]... | --command CMD [--cmd-arg ARG]...) SCENARIO [options]
//
// Scenarios:
//   list-tools                                    -> {ok, tools:[...]}
//   call     --tool NAME [--args JSON]            -> {ok, result} | {ok:false, error}
//   progress --tool NAME [--args JSON] [--timeout MS] [--reset-timeout-on-progress] [--max-total-timeout MS]
//                                                 -> {ok, progress:[...], elapsedMs, result | error}
//   cancel   --tool NAME [--args JSON] [--after MS] [--then-tool NAME --then-args JSON]
//            starts the call with onprogress, aborts it via AbortController after MS (default 1000), then
//            (optionally) makes a follow-up call on the same session
//                                                 -> {ok, aborted, error, progress, elapsedMs, lateResult, followUp}
//
// Every output also carries {scenario, transport, serverInfo, serverCapabilities, protocolVersion, elapsedMs}.
// Exit code is 0 when the JSON was printed (even for an expected error or a failed connection), 2 for bad usage.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

function usage(message) {
  process.stderr.write(`ts_client: ${message}\n`);
  process.stdout.write(JSON.stringify({ ok: false, usageError: message }) + "\n");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { headers: {}, cmdArgs: [], scenario: null };
  const flags = new Set(["--reset-timeout-on-progress"]);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      if (opts.scenario) usage(`unexpected argument ${a}`);
      opts.scenario = a;
      continue;
    }
    if (flags.has(a)) {
      opts[camel(a)] = true;
      continue;
    }
    const v = argv[++i];
    if (v === undefined) usage(`${a} needs a value`);
    if (a === "--header") {
      const idx = v.indexOf(":");
      if (idx <= 0) usage(`--header wants "Name: value", got ${v}`);
      opts.headers[v.slice(0, idx).trim()] = v.slice(idx + 1).trim();
    } else if (a === "--cmd-arg") {
      opts.cmdArgs.push(v);
    } else {
      opts[camel(a)] = v;
    }
  }
  return opts;
}

function camel(flag) {
  return flag.replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

function jsonArg(text, name) {
  if (text === undefined) return {};
  try {
    return JSON.parse(text);
  } catch (e) {
    usage(`${name} is not JSON: ${e.message}`);
  }
}

function intArg(text, name) {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n)) usage(`${name} must be a number`);
  return n;
}

function describeError(e) {
  if (e === undefined || e === null) return null;
  const out = { name: e.name ?? typeof e, message: e.message ?? String(e) };
  if (e.code !== undefined) out.code = e.code;
  if (e.data !== undefined) out.data = e.data;
  return out;
}

const opts = parseArgs(process.argv.slice(2));
if (!opts.scenario) usage("missing SCENARIO (list-tools | call | progress | cancel)");
if (!opts.url === !opts.command) usage("give exactly one of --url or --command");

const started = Date.now();
const out = { scenario: opts.scenario, transport: opts.url ? "streamable-http" : "stdio" };

let transport;
if (opts.url) {
  transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    requestInit: { headers: opts.headers },
  });
} else {
  transport = new StdioClientTransport({ command: opts.command, args: opts.cmdArgs, stderr: "inherit" });
}

// Record the negotiated protocol version for either transport (the client hands it to the transport).
let negotiatedVersion = null;
const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
transport.setProtocolVersion = (version) => {
  negotiatedVersion = version;
  setProtocolVersion?.(version);
};

const client = new Client({ name: "signoff-ts-client", version: "1.0.0" }, { capabilities: {} });

async function run() {
  await client.connect(transport);
  out.serverInfo = client.getServerVersion();
  out.serverCapabilities = client.getServerCapabilities();
  out.protocolVersion = negotiatedVersion;

  const tool = opts.tool;
  const args = jsonArg(opts.args, "--args");
  switch (opts.scenario) {
    case "list-tools": {
      const res = await client.listTools();
      out.tools = res.tools;
      out.ok = true;
      break;
    }
    case "call": {
      if (!tool) usage("call needs --tool");
      try {
        out.result = await client.callTool({ name: tool, arguments: args }, undefined, {
          timeout: intArg(opts.timeout, "--timeout"),
        });
        out.ok = true;
      } catch (e) {
        out.ok = false;
        out.error = describeError(e);
      }
      break;
    }
    case "progress": {
      if (!tool) usage("progress needs --tool");
      const progress = [];
      const t0 = Date.now();
      try {
        out.result = await client.callTool({ name: tool, arguments: args }, undefined, {
          onprogress: (p) => progress.push({ ...p, atMs: Date.now() - t0 }),
          timeout: intArg(opts.timeout, "--timeout"),
          resetTimeoutOnProgress: Boolean(opts.resetTimeoutOnProgress),
          maxTotalTimeout: intArg(opts.maxTotalTimeout, "--max-total-timeout"),
        });
        out.ok = true;
      } catch (e) {
        out.ok = false;
        out.error = describeError(e);
      }
      out.callElapsedMs = Date.now() - t0;
      out.progress = progress;
      break;
    }
    case "cancel": {
      if (!tool) usage("cancel needs --tool");
      const after = intArg(opts.after, "--after") ?? 1000;
      const progress = [];
      const controller = new AbortController();
      const t0 = Date.now();
      const call = client.callTool({ name: tool, arguments: args }, undefined, {
        onprogress: (p) => progress.push({ ...p, atMs: Date.now() - t0 }),
        signal: controller.signal,
        timeout: intArg(opts.timeout, "--timeout"),
      });
      const timer = setTimeout(() => controller.abort(new Error(`cancelled by ts_client after ${after} ms`)), after);
      try {
        out.lateResult = await call; // the call finished before the abort
        out.aborted = false;
      } catch (e) {
        out.aborted = controller.signal.aborted;
        out.error = describeError(e);
      } finally {
        clearTimeout(timer);
      }
      out.callElapsedMs = Date.now() - t0;
      out.progress = progress;
      if (opts.thenTool) {
        const t1 = Date.now();
        try {
          const res = await client.callTool(
            { name: opts.thenTool, arguments: jsonArg(opts.thenArgs, "--then-args") },
            undefined,
            { timeout: intArg(opts.timeout, "--timeout") ?? 30000 },
          );
          out.followUp = { ok: true, result: res, elapsedMs: Date.now() - t1 };
        } catch (e) {
          out.followUp = { ok: false, error: describeError(e), elapsedMs: Date.now() - t1 };
        }
      }
      out.ok = out.aborted === true && (out.followUp === undefined || out.followUp.ok);
      break;
    }
    default:
      usage(`unknown scenario ${opts.scenario}`);
  }
}

try {
  await run();
} catch (e) {
  out.ok = false;
  out.fatal = describeError(e);
  if (e?.stack) process.stderr.write(`${e.stack}\n`);
}
try {
  await client.close();
} catch (e) {
  process.stderr.write(`close failed: ${e}\n`);
}
out.elapsedMs = Date.now() - started;
out.node = process.version;
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
