package dev.leadscore.streams;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One lead's state, kept in the state store as JSON (Jackson): traits with
 * the event time that set them, each engagement rule's decayed credit, the
 * open cap windows, the remembered message ids, the tier and the score last
 * published.
 */
public final class Lead {
    public long clock = Long.MIN_VALUE;
    public int tier;
    public double lastEmittedScore;
    public Map<String, Trait> traits = new HashMap<>();
    public Map<String, Credit> credits = new HashMap<>();
    public List<Window> windows = new ArrayList<>();
    /** Message id -> event time, oldest first. */
    public LinkedHashMap<String, Long> seen = new LinkedHashMap<>();

    public static final class Trait {
        public String value;
        public long at;
    }

    /** A sum of hits, each halving every half-life from its own time,
     *  held as its value at `anchor`. */
    public static final class Credit {
        public double value;
        public long anchor;

        double at(long time, double halfLifeMs) {
            if (Double.isInfinite(halfLifeMs)) {
                return value;
            }
            return value * Math.pow(0.5, (time - anchor) / halfLifeMs);
        }

        void add(double points, long time, double halfLifeMs) {
            if (value == 0 || time >= anchor) {
                value = at(time, halfLifeMs) + points;
                anchor = time;
            } else {
                value += points * Math.pow(0.5, (anchor - time) / halfLifeMs);
            }
        }
    }

    /** A capped rule's hits in one fixed window: credited at most the cap. */
    public static final class Window {
        public String rule;
        public long index;
        public double raw;
        public Credit credit = new Credit();

        double scale(double cap) {
            return Math.abs(raw) <= cap ? 1 : cap / Math.abs(raw);
        }
    }
}
