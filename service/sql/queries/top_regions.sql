-- Regions visiting and ordering most (the course lab's two region rankings in one table).
WITH page_views AS (
    SELECT
        region,
        country,
        funnel_stage,
        client_ip || ' ' || coalesce(user_agent, '') AS visitor
    FROM events
    WHERE is_page_view
)
SELECT
    region,
    country,
    count(DISTINCT visitor) AS visitors,
    count(DISTINCT CASE WHEN funnel_stage = 'purchase' THEN visitor END) AS purchasers,
    count(*) AS page_views
FROM page_views
GROUP BY region, country
ORDER BY visitors DESC, region, country
