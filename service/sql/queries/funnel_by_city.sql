-- Funnel by city: visitors, menu viewers, purchasers and the conversion between the stages.
WITH page_views AS (
    SELECT
        city,
        region,
        country,
        funnel_stage,
        client_ip || ' ' || coalesce(user_agent, '') AS visitor
    FROM events
    WHERE is_page_view
),
by_city AS (
    SELECT
        city,
        region,
        country,
        count(DISTINCT visitor) AS visitors,
        count(DISTINCT CASE WHEN funnel_stage = 'menu' THEN visitor END) AS menu_viewers,
        count(DISTINCT CASE WHEN funnel_stage = 'purchase' THEN visitor END) AS purchasers
    FROM page_views
    GROUP BY city, region, country
)
SELECT
    city,
    region,
    country,
    visitors,
    menu_viewers,
    purchasers,
    round(100.0 * menu_viewers / visitors, 1) AS menu_pct,
    round(100.0 * purchasers / visitors, 1) AS purchase_pct,
    round(100.0 * purchasers / nullif(menu_viewers, 0), 1) AS menu_to_purchase_pct
FROM by_city
ORDER BY visitors DESC, city, region, country
