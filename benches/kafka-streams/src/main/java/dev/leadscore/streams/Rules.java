package dev.leadscore.streams;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Predicate;
import java.util.regex.Pattern;

/**
 * The fit, engagement, grade and tier rules of config/leadscore.toml,
 * written in Java as a Kafka Streams user would write them. Accounts,
 * lifecycle rules, bot filters and alias merging are not part of this job.
 */
final class Rules {
    static final long DAY_MS = 86_400_000L;
    static final double DEFAULT_HALF_LIFE_MS = 21 * DAY_MS;
    static final double NO_DECAY = Double.POSITIVE_INFINITY;
    static final double STEP = 5;
    static final double HYSTERESIS = 5;
    static final int TOP_CONTRIBUTIONS = 5;
    static final long DEDUP_WINDOW_MS = 8 * DAY_MS;
    static final int DEDUP_MAX_IDS = 1000;
    /** Cap windows older than this behind the lead's clock are folded. */
    static final long ALLOWED_LATENESS_MS = 7 * DAY_MS;

    /** The traits the fit rules and tier gates read. */
    static final Set<String> TRAITS = Set.of(
            "title", "department", "company.employees", "company.industry",
            "company.annual_revenue", "country", "email", "budget", "authority");

    record Fit(String name, String group, double points, Predicate<Map<String, String>> when) {}

    record Engagement(String name, double points, double halfLifeMs, boolean once,
                      double capPoints, long capWindowMs, Predicate<JsonNode> when) {
        boolean capped() {
            return capWindowMs > 0;
        }
    }

    record Tier(String name, double minScore, char minGrade, List<String> requireAnyTrait) {}

    static final List<Fit> FIT = List.of(
            new Fit("title_executive", "seniority", 20,
                    t -> find(t.get("title"), "(?i)\\b(chief|c[eotfmr]o|founder|owner|president)\\b")),
            new Fit("title_vp", "seniority", 18,
                    t -> find(t.get("title"), "(?i)\\b(vp|svp|evp|vice president|head of)\\b")),
            new Fit("title_director", "seniority", 12, t -> contains(t.get("title"), "director")),
            new Fit("title_manager", "seniority", 6, t -> find(t.get("title"), "(?i)\\b(manager|lead)\\b")),
            new Fit("title_student", "seniority", -15, t -> find(t.get("title"), "(?i)\\b(student|intern)\\b")),
            new Fit("department_marketing_sales", "department", 8,
                    t -> oneOf(t.get("department"), "marketing", "sales", "revenue operations", "growth")),
            new Fit("company_size_mid_market", "company_size", 12,
                    t -> range(t.get("company.employees"), 200, 5000)),
            new Fit("company_size_enterprise", "company_size", 10,
                    t -> range(t.get("company.employees"), 5000, Double.POSITIVE_INFINITY)),
            new Fit("company_size_small", "company_size", 4,
                    t -> range(t.get("company.employees"), 20, 200)),
            new Fit("industry_target", null, 8,
                    t -> oneOf(t.get("company.industry"), "software", "saas", "financial services",
                            "e-commerce", "marketing")),
            new Fit("revenue_over_10m", null, 6,
                    t -> range(t.get("company.annual_revenue"), 10_000_000, Double.POSITIVE_INFINITY)),
            new Fit("country_served", null, 4,
                    t -> oneOf(t.get("country"), "US", "United States", "CA", "Canada", "GB",
                            "United Kingdom", "DE", "Germany")),
            new Fit("email_personal_domain", null, -10,
                    t -> oneOf(emailDomain(t.get("email")), "gmail.com", "yahoo.com", "hotmail.com",
                            "outlook.com", "aol.com", "icloud.com", "proton.me")),
            new Fit("email_competitor_domain", null, -30,
                    t -> oneOf(emailDomain(t.get("email")), "marketo.com", "hubspot.com", "pardot.com")));

    static final List<Engagement> ENGAGEMENT = List.of(
            new Engagement("demo_requested", 30, 30 * DAY_MS, false, 0, 0,
                    e -> track(e, "Demo Requested", "Contact Sales")),
            new Engagement("pricing_page", 10, DEFAULT_HALF_LIFE_MS, false, 30, 7 * DAY_MS,
                    e -> page(e) && startsWith(path(e), "/pricing")),
            new Engagement("product_page", 3, DEFAULT_HALF_LIFE_MS, false, 15, 7 * DAY_MS,
                    e -> page(e) && find(path(e), "^/(product|features|integrations)(/|$)")),
            new Engagement("contact_page", 8, DEFAULT_HALF_LIFE_MS, false, 16, 7 * DAY_MS,
                    e -> page(e) && startsWith(path(e), "/contact")),
            new Engagement("form_submitted", 12, DEFAULT_HALF_LIFE_MS, false, 0, 0,
                    e -> track(e, "Form Submitted")
                            && !"newsletter".equalsIgnoreCase(e.path("properties").path("form_type").asText(null))),
            new Engagement("content_downloaded", 8, DEFAULT_HALF_LIFE_MS, false, 24, 30 * DAY_MS,
                    e -> track(e, "Whitepaper Downloaded", "Ebook Downloaded", "Case Study Downloaded")),
            new Engagement("webinar_attended", 15, DEFAULT_HALF_LIFE_MS, false, 0, 0,
                    e -> track(e, "Webinar Attended")
                            && e.path("properties").path("minutes_watched").asDouble(0) >= 10),
            new Engagement("trial_started", 25, DEFAULT_HALF_LIFE_MS, true, 0, 0,
                    e -> track(e, "Trial Started")),
            new Engagement("email_opened", 1, DEFAULT_HALF_LIFE_MS, false, 15, 30 * DAY_MS,
                    e -> track(e, "Email Opened")),
            new Engagement("email_clicked", 3, DEFAULT_HALF_LIFE_MS, false, 15, 30 * DAY_MS,
                    e -> track(e, "Email Link Clicked")),
            new Engagement("unsubscribed", -20, NO_DECAY, false, 0, 0, e -> track(e, "Unsubscribed")),
            new Engagement("careers_page", -10, DEFAULT_HALF_LIFE_MS, false, 20, 30 * DAY_MS,
                    e -> page(e) && startsWith(path(e), "/careers")),
            new Engagement("job_application", -40, NO_DECAY, false, 0, 0,
                    e -> track(e, "Job Application Submitted")),
            new Engagement("email_bounced", -15, NO_DECAY, true, 0, 0, e -> track(e, "Email Bounced")),
            new Engagement("spam_complaint", -50, NO_DECAY, true, 0, 0, e -> track(e, "Spam Complaint")));

    static final List<Tier> TIERS = List.of(
            new Tier("cold", 0, 'D', List.of()),
            new Tier("warm", 50, 'D', List.of()),
            new Tier("mql", 70, 'C', List.of()),
            new Tier("sql", 85, 'B', List.of("budget", "authority")));

    static char grade(double fit) {
        return fit >= 45 ? 'A' : fit >= 30 ? 'B' : fit >= 15 ? 'C' : 'D';
    }

    static double clamp(double score) {
        return Math.max(0, Math.min(100, score));
    }

    static boolean gatesPass(int tier, char grade, Map<String, String> traits) {
        Tier t = TIERS.get(tier);
        return grade <= t.minGrade()
                && (t.requireAnyTrait().isEmpty() || t.requireAnyTrait().stream().anyMatch(traits::containsKey));
    }

    /** Up to the highest tier the lead qualifies for; down only once the
     *  score falls HYSTERESIS below the held tier's minimum. */
    static int nextTier(int current, double score, char grade, Map<String, String> traits) {
        int plain = 0;
        for (int i = TIERS.size() - 1; i > 0; i--) {
            if (score >= TIERS.get(i).minScore() && gatesPass(i, grade, traits)) {
                plain = i;
                break;
            }
        }
        if (plain >= current) {
            return plain;
        }
        for (int i = current; i > plain; i--) {
            if (score >= TIERS.get(i).minScore() - HYSTERESIS && gatesPass(i, grade, traits)) {
                return i;
            }
        }
        return plain;
    }

    private static final Map<String, Pattern> PATTERNS = new java.util.concurrent.ConcurrentHashMap<>();

    private static boolean find(String text, String regex) {
        return text != null && PATTERNS.computeIfAbsent(regex, Pattern::compile).matcher(text).find();
    }

    private static boolean contains(String text, String part) {
        return text != null && text.toLowerCase(Locale.ROOT).contains(part);
    }

    private static boolean startsWith(String text, String prefix) {
        return text != null && text.regionMatches(true, 0, prefix, 0, prefix.length());
    }

    private static boolean oneOf(String text, String... values) {
        if (text == null) {
            return false;
        }
        for (String v : values) {
            if (v.equalsIgnoreCase(text)) {
                return true;
            }
        }
        return false;
    }

    private static boolean range(String number, double atLeast, double below) {
        if (number == null) {
            return false;
        }
        try {
            double x = Double.parseDouble(number);
            return x >= atLeast && x < below;
        } catch (NumberFormatException e) {
            return false;
        }
    }

    private static String emailDomain(String email) {
        if (email == null) {
            return null;
        }
        int at = email.lastIndexOf('@');
        return at < 0 ? null : email.substring(at + 1).toLowerCase(Locale.ROOT);
    }

    private static boolean track(JsonNode e, String... names) {
        return "track".equals(e.path("type").asText()) && oneOf(e.path("event").asText(null), names);
    }

    private static boolean page(JsonNode e) {
        return "page".equals(e.path("type").asText());
    }

    private static String path(JsonNode e) {
        return e.path("context").path("page").path("path").asText(null);
    }

    private Rules() {}
}
