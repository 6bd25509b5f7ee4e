-- Paced load for bench/healthz_load.py: each connection waits WRK_DELAY_MS between requests,
-- so `wrk -c N` sends about N * 1000 / (WRK_DELAY_MS + latency) requests a second (Debian's
-- wrk has no fixed-rate option). wrk's latency figures exclude the pause.
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "9")

function delay()
  return pause
end
