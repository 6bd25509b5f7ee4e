-- Bots' share of the traffic: lines and distinct clients from known crawlers, monitors, scripts.
SELECT
    count(*) AS lines,
    count(CASE WHEN is_bot THEN 1 END) AS bot_lines,
    round(100.0 * count(CASE WHEN is_bot THEN 1 END) / count(*), 1) AS bot_lines_pct,
    count(DISTINCT CASE WHEN is_bot THEN client_ip || ' ' || coalesce(user_agent, '') END)
        AS bot_clients,
    count(DISTINCT CASE WHEN is_bot THEN user_agent END) AS bot_user_agents
FROM events
