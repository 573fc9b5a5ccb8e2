package io.magnetar.tests.security;

import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The {@code --name value} options and {@code --flag} switches of one subcommand. Each
 * subcommand names the options it knows, so a misspelt option is an error rather than ignored.
 */
final class Options {
    private final String command;
    private final Map<String, String> values = new HashMap<>();
    private final Set<String> flags = new HashSet<>();

    Options(String command, List<String> arguments, Set<String> valueNames, Set<String> flagNames) {
        this.command = command;
        for (int i = 0; i < arguments.size(); i++) {
            String name = arguments.get(i);
            if (flagNames.contains(name)) {
                flags.add(name);
            } else if (valueNames.contains(name)) {
                if (i + 1 >= arguments.size()) {
                    throw new UsageException(command + ": " + name + " needs a value");
                }
                values.put(name, arguments.get(++i));
            } else {
                throw new UsageException(command + ": unknown argument " + name);
            }
        }
    }

    String required(String name) {
        String value = values.get(name);
        if (value == null) {
            throw new UsageException(command + ": " + name + " is required");
        }
        return value;
    }

    String optional(String name) {
        return values.get(name);
    }

    String optional(String name, String fallback) {
        return values.getOrDefault(name, fallback);
    }

    boolean flag(String name) {
        return flags.contains(name);
    }

    /** Bad command-line use: Main prints it with the usage and exits 2. */
    static final class UsageException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }
}
