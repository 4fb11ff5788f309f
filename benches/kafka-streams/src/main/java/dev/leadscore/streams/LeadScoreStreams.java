package dev.leadscore.streams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueBytesStoreSupplier;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The leadscore job as a Kafka Streams application: Segment JSON events in
 * (keyed by lead), per-lead decayed scores in a changelogged key-value
 * store, score_changed and threshold_crossed JSON out, exactly_once_v2 with
 * 100 ms commits.
 *
 *   java -cp 'target/classes:target/lib/*' dev.leadscore.streams.LeadScoreStreams \
 *       BOOTSTRAP INPUT OUTPUT APPLICATION_ID rocksdb|memory STATE_DIR
 */
public final class LeadScoreStreams {
    static final String STORE = "leads";
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 6 || !(args[4].equals("rocksdb") || args[4].equals("memory"))) {
            System.err.println("usage: LeadScoreStreams BOOTSTRAP INPUT OUTPUT APPLICATION_ID rocksdb|memory STATE_DIR");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        KeyValueBytesStoreSupplier supplier = args[4].equals("rocksdb")
                ? Stores.persistentKeyValueStore(STORE)
                : Stores.inMemoryKeyValueStore(STORE);
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(supplier, Serdes.String(), jsonSerde(Lead.class)));
        builder.stream(args[1], Consumed.with(Serdes.String(), Serdes.String()))
                .process(Scorer::new, STORE)
                .to(args[2], Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_APPLICATION;
        });
        streams.start();
        stopped.await();
    }

    static <T> Serde<T> jsonSerde(Class<T> type) {
        Serializer<T> serializer = (topic, value) -> {
            try {
                return value == null ? null : JSON.writeValueAsBytes(value);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        };
        Deserializer<T> deserializer = (topic, bytes) -> {
            try {
                return bytes == null ? null : JSON.readValue(bytes, type);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        };
        return Serdes.serdeFrom(serializer, deserializer);
    }

    /** Applies each event to its lead and forwards what changed. */
    static final class Scorer implements Processor<String, String, String, String> {
        private ProcessorContext<String, String> context;
        private KeyValueStore<String, Lead> leads;
        /** The input record's timestamp, carried by its outputs. */
        private long inputTimestamp;

        @Override
        public void init(ProcessorContext<String, String> context) {
            this.context = context;
            this.leads = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<String, String> record) {
            inputTimestamp = record.timestamp();
            JsonNode event;
            long at;
            try {
                event = JSON.readTree(record.value());
                at = Instant.parse(event.path("timestamp").asText()).toEpochMilli();
            } catch (Exception malformed) {
                return;
            }
            String leadId = event.path("userId").asText(event.path("anonymousId").asText(null));
            String messageId = event.path("messageId").asText(null);
            if (leadId == null || messageId == null) {
                return;
            }
            Lead lead = leads.get(leadId);
            if (lead == null) {
                lead = new Lead();
            }
            if (lead.seen.containsKey(messageId)) {
                return;
            }
            lead.clock = Math.max(lead.clock, at);
            remember(lead, messageId, at);
            applyTraits(lead, event.path("traits"), at);
            applyTraits(lead, event.path("context").path("traits"), at);
            for (Rules.Engagement rule : Rules.ENGAGEMENT) {
                if (rule.when().test(event)) {
                    credit(lead, rule, at);
                }
            }
            foldOldWindows(lead);
            publish(leadId, lead, messageId);
            leads.put(leadId, lead);
        }

        private static void remember(Lead lead, String messageId, long at) {
            lead.seen.put(messageId, at);
            Iterator<Map.Entry<String, Long>> oldest = lead.seen.entrySet().iterator();
            while (oldest.hasNext()) {
                Map.Entry<String, Long> e = oldest.next();
                if (lead.seen.size() > Rules.DEDUP_MAX_IDS || e.getValue() < lead.clock - Rules.DEDUP_WINDOW_MS) {
                    oldest.remove();
                } else {
                    break;
                }
            }
        }

        /** Latest event time wins, per trait the rules read. */
        private static void applyTraits(Lead lead, JsonNode traits, long at) {
            if (!traits.isObject()) {
                return;
            }
            for (String name : Rules.TRAITS) {
                JsonNode value = traits.at("/" + name.replace('.', '/'));
                if (value.isMissingNode() || value.isNull() || value.isContainerNode()) {
                    continue;
                }
                Lead.Trait t = lead.traits.get(name);
                if (t == null) {
                    t = new Lead.Trait();
                    t.at = Long.MIN_VALUE;
                    lead.traits.put(name, t);
                }
                if (at >= t.at) {
                    t.value = value.asText();
                    t.at = at;
                }
            }
        }

        private static void credit(Lead lead, Rules.Engagement rule, long at) {
            if (rule.once()) {
                Lead.Credit earliest = lead.credits.get(rule.name());
                if (earliest == null || at < earliest.anchor) {
                    Lead.Credit c = new Lead.Credit();
                    c.value = rule.points();
                    c.anchor = at;
                    lead.credits.put(rule.name(), c);
                }
                return;
            }
            if (!rule.capped()) {
                lead.credits.computeIfAbsent(rule.name(), n -> new Lead.Credit())
                        .add(rule.points(), at, rule.halfLifeMs());
                return;
            }
            long index = Math.floorDiv(at, rule.capWindowMs());
            Lead.Window window = null;
            for (Lead.Window w : lead.windows) {
                if (w.rule.equals(rule.name()) && w.index == index) {
                    window = w;
                }
            }
            if (window == null) {
                window = new Lead.Window();
                window.rule = rule.name();
                window.index = index;
                lead.windows.add(window);
            }
            window.raw += rule.points();
            window.credit.add(rule.points(), at, rule.halfLifeMs());
        }

        /** Windows that no accepted event can reach any more are folded,
         *  scaled by their cap, into their rule's credit. */
        private static void foldOldWindows(Lead lead) {
            lead.windows.removeIf(w -> {
                Rules.Engagement rule = rule(w.rule);
                long end = (w.index + 1) * rule.capWindowMs();
                if (end + Rules.ALLOWED_LATENESS_MS >= lead.clock) {
                    return false;
                }
                Lead.Credit folded = lead.credits.computeIfAbsent(w.rule, n -> new Lead.Credit());
                folded.add(w.credit.at(lead.clock, rule.halfLifeMs()) * w.scale(rule.capPoints()),
                        lead.clock, rule.halfLifeMs());
                return true;
            });
        }

        private static Rules.Engagement rule(String name) {
            for (Rules.Engagement r : Rules.ENGAGEMENT) {
                if (r.name().equals(name)) {
                    return r;
                }
            }
            throw new IllegalStateException("no rule " + name);
        }

        private void publish(String leadId, Lead lead, String cause) {
            Map<String, String> traits = new java.util.HashMap<>();
            lead.traits.forEach((k, v) -> traits.put(k, v.value));
            List<ObjectNode> reasons = new ArrayList<>();
            double fit = 0;
            java.util.Set<String> groupsMatched = new java.util.HashSet<>();
            for (Rules.Fit rule : Rules.FIT) {
                if (rule.group() != null && groupsMatched.contains(rule.group())) {
                    continue;
                }
                if (rule.when().test(traits)) {
                    fit += rule.points();
                    reasons.add(reason(rule.name(), rule.points()));
                    if (rule.group() != null) {
                        groupsMatched.add(rule.group());
                    }
                }
            }
            double engagement = 0;
            for (Rules.Engagement rule : Rules.ENGAGEMENT) {
                double points = 0;
                Lead.Credit c = lead.credits.get(rule.name());
                if (c != null) {
                    points += c.at(lead.clock, rule.halfLifeMs());
                }
                for (Lead.Window w : lead.windows) {
                    if (w.rule.equals(rule.name())) {
                        points += w.credit.at(lead.clock, rule.halfLifeMs()) * w.scale(rule.capPoints());
                    }
                }
                if (points != 0) {
                    engagement += points;
                    reasons.add(reason(rule.name(), points));
                }
            }
            double score = Rules.clamp(fit + engagement);
            char grade = Rules.grade(fit);
            int tier = Rules.nextTier(lead.tier, score, grade, traits);
            reasons.sort((a, b) -> Double.compare(Math.abs(b.get("points").asDouble()),
                    Math.abs(a.get("points").asDouble())));
            ArrayNode top = JSON.createArrayNode();
            reasons.stream().limit(Rules.TOP_CONTRIBUTIONS).forEach(top::add);
            if (tier != lead.tier || Math.abs(score - lead.lastEmittedScore) >= Rules.STEP) {
                ObjectNode out = output("score_changed", leadId, cause, score, fit, engagement, grade, top);
                out.put("previous_score", lead.lastEmittedScore);
                out.put("tier", Rules.TIERS.get(tier).name());
                forward(leadId, out);
                lead.lastEmittedScore = score;
            }
            if (tier != lead.tier) {
                ObjectNode out = output("threshold_crossed", leadId, cause, score, fit, engagement, grade, top);
                out.put("from_tier", Rules.TIERS.get(lead.tier).name());
                out.put("to_tier", Rules.TIERS.get(tier).name());
                forward(leadId, out);
                lead.tier = tier;
            }
        }

        private static ObjectNode reason(String rule, double points) {
            ObjectNode r = JSON.createObjectNode();
            r.put("rule", rule);
            r.put("points", points);
            return r;
        }

        private static ObjectNode output(String type, String leadId, String cause, double score, double fit,
                                         double engagement, char grade, ArrayNode top) {
            ObjectNode out = JSON.createObjectNode();
            out.put("type", type);
            out.put("lead_id", leadId);
            out.put("cause_event_id", cause);
            out.put("score", score);
            out.put("fit", fit);
            out.put("engagement", engagement);
            out.put("grade", String.valueOf(grade));
            out.set("top_contributions", top);
            return out;
        }

        private void forward(String leadId, ObjectNode out) {
            try {
                context.forward(new Record<>(leadId, JSON.writeValueAsString(out), inputTimestamp));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    private LeadScoreStreams() {}
}
