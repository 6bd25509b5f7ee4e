-- Top cities by visitors (distinct client address + user agent with a page view), with page views.
WITH page_views AS (
    SELECT city, region, country, client_ip || ' ' || coalesce(user_agent, '') AS visitor
    FROM events
    WHERE is_page_view
)
SELECT
    city,
    region,
    country,
    count(DISTINCT visitor) AS visitors,
    count(*) AS page_views
FROM page_views
GROUP BY city, region, country
ORDER BY visitors DESC, city, region, country
LIMIT 20
