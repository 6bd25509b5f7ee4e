-- Hourly trend (UTC): page views, visitors, menu views and purchases per hour.
SELECT
    date_trunc('hour', event_time) AS hour_start,
    count(*) AS page_views,
    count(DISTINCT client_ip || ' ' || coalesce(user_agent, '')) AS visitors,
    count(CASE WHEN funnel_stage = 'menu' THEN 1 END) AS menu_views,
    count(CASE WHEN funnel_stage = 'purchase' THEN 1 END) AS purchases
FROM events
WHERE is_page_view
GROUP BY date_trunc('hour', event_time)
ORDER BY hour_start
