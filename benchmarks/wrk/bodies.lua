-- wrk script: POST pre-built request bodies in turn, report a JSON summary line.
--
-- Environment (set by the harness):
--   BENCH_BODY_DIR      folder with index.txt (one body file name a line) and content_type.txt
--   BENCH_DELAY_MS      optional pause (ms) before each request on a connection (paced load)
-- Every thread reads all bodies once at start; connection i of thread t starts at a different body.
-- At the end prints one line "BENCH_JSON {...}" with requests, errors and latency percentiles (us).

local dir = os.getenv("BENCH_BODY_DIR")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
local bodies = {}
local content_type = nil
local counter = 0

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  content_type = read_file(dir .. "/content_type.txt"):gsub("%s+$", "")
  for name in io.lines(dir .. "/index.txt") do
    if #name > 0 then bodies[#bodies + 1] = read_file(dir .. "/" .. name) end
  end
  counter = math.random(#bodies)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = content_type
end

function request()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
