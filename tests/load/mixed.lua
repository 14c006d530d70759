-- wrk script: a mix of /generate, /v1/completions and streamed
-- /v1/chat/completions requests. Every response must have status 200 and
-- a complete body of one of the three shapes. The responses of a thread's
-- connections interleave, so a body is matched against all three shapes
-- rather than against the request sent last. The totals are printed as
--   load: ok=N malformed=N
-- by done(), which test_server_load.py parses.

local bodies = {
  {path = "/generate", check = '^{"generated_text":"Once upon a time.*"}$',
   body = '{"prompt": "Once upon a time", "max_new_tokens": 24}'},
  {path = "/v1/completions", check = '^{"id":"cmpl%-.*"usage":{.*}}$',
   body = '{"model": "stories260K", "prompt": "Lily went to the park", "max_tokens": 24,'
          .. ' "temperature": 0.8}'},
  {path = "/v1/chat/completions", check = '^data: {.*"finish_reason":"[a-z]+".*data: %[DONE%]\n\n$',
   body = '{"model": "stories260K", "stream": true, "max_tokens": 24,'
          .. ' "messages": [{"role": "user", "content": "नमस्ते, एक कहानी सुनाओ"}]}'},
}

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  malformed = 0
  sent = 0
end

function request()
  sent = sent + 1
  local kind = bodies[(sent % #bodies) + 1]
  return wrk.format("POST", kind.path, {["Content-Type"] = "application/json"}, kind.body)
end

local function well_formed(body)
  for _, kind in ipairs(bodies) do
    if string.find(body, kind.check) then
      return true
    end
  end
  return false
end

function response(status, headers, body)
  if status == 200 and body and well_formed(body) then
    ok = ok + 1
  else
    malformed = malformed + 1
    if malformed <= 3 then
      io.stderr:write(string.format("malformed response: status %d, body %s\n", status,
                                    string.sub(body or "", 1, 300)))
    end
  end
end

function done(summary, latency, requests)
  local total_ok, total_malformed = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_malformed = total_malformed + thread:get("malformed")
  end
  local e = summary.errors
  io.write(string.format("load: ok=%d malformed=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
                         total_ok, total_malformed, e.connect, e.read, e.write, e.status,
                         e.timeout))
  io.write(string.format("latency: p50=%.1fms p99=%.1fms max=%.1fms\n",
                         latency:percentile(50) / 1000, latency:percentile(99) / 1000,
                         latency.max / 1000))
end
