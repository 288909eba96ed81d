package gatewayclient;

import java.util.LinkedHashMap;
import java.util.Map;

/** One JSON object, built field by field and printed as a single line on stdout. */
final class JsonLine {
    private final Map<String, Object> fields = new LinkedHashMap<>();

    JsonLine(String event) {
        fields.put("event", event);
    }

    /** Adds a field: a String, Number, Boolean or null. */
    JsonLine put(String name, Object value) {
        fields.put(name, value);
        return this;
    }

    /** Prints the object as one line; synchronized so lines from SDK threads never interleave. */
    void print() {
        String line = toString();
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }

    @Override
    public String toString() {
        StringBuilder out = new StringBuilder("{");
        boolean first = true;
        for (Map.Entry<String, Object> field : fields.entrySet()) {
            if (!first) {
                out.append(',');
            }
            first = false;
            quote(out, field.getKey());
            out.append(':');
            Object value = field.getValue();
            if (value == null) {
                out.append("null");
            } else if (value instanceof Number || value instanceof Boolean) {
                out.append(value);
            } else {
                quote(out, value.toString());
            }
        }
        return out.append('}').toString();
    }

    private static void quote(StringBuilder out, String text) {
        out.append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20 || c > 0x7e) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }
}
