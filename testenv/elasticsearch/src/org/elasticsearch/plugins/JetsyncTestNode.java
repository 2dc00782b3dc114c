/*
 * jetsync test environment: runs one real Elasticsearch node in this JVM,
 * with the HTTP module (transport-netty4) loaded from the classpath instead
 * of from a distribution's modules/ directory.
 *
 *   java -cp CLASSPATH org.elasticsearch.plugins.JetsyncTestNode HTTP_PORT HOME_DIR
 *
 * HOME_DIR holds config/, data/ and logs/; the data survive a restart on the
 * same HOME_DIR. The node listens on 127.0.0.1 only, security is off (the
 * x-pack plugins are not loaded at all), discovery is single-node, and the
 * disk watermarks are off so a full test disk does not make indices
 * read-only.
 *
 * Environment:
 *   ES_OWNER_PID             shut down when the process with this pid is gone
 *   ES_DELETE_HOME_ON_EXIT   "1": delete HOME_DIR after shutting down
 *
 * It lives in org.elasticsearch.plugins because PluginsService.LoadedPlugin
 * is package-private there, the same way Elasticsearch's own test framework
 * loads classpath plugins.
 */
package org.elasticsearch.plugins;

import org.elasticsearch.Version;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

public final class JetsyncTestNode {

    /** The node's plugins: only the HTTP/transport module. */
    private static final List<Class<? extends Plugin>> PLUGINS = List.of(Netty4Plugin.class);

    /** INFO and above to stdout (es.sh sends it to HOME_DIR/es.log). */
    private static final String LOG4J2_PROPERTIES = """
        status = error
        appender.console.type = Console
        appender.console.name = console
        appender.console.layout.type = PatternLayout
        appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %m%n
        rootLogger.level = info
        rootLogger.appenderRef.console.ref = console
        """;

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: JetsyncTestNode HTTP_PORT HOME_DIR");
            System.exit(2);
        }
        int httpPort = Integer.parseInt(args[0]);
        Path home = Paths.get(args[1]).toAbsolutePath();
        Files.createDirectories(home.resolve("config"));

        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "jetsync-test")
            .put("node.name", "jetsync-es")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", 0)
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.destructive_requires_name", false)
            .build();

        Path log4jConfig = home.resolve("config").resolve("log4j2.properties");
        if (Files.notExists(log4jConfig)) {
            Files.writeString(log4jConfig, LOG4J2_PROPERTIES);
        }
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "jetsync-es");

        // What Elasticsearch's bootstrap does before it builds a node.
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("jetsync-es");
        LogConfigurator.configureESLogging();
        LogConfigurator.configure(env, true); // true: keep the console appender
        Node node = new ClasspathNode(env, PLUGINS);

        CountDownLatch stopped = new CountDownLatch(1);
        boolean deleteHome = "1".equals(System.getenv("ES_DELETE_HOME_ON_EXIT"));
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            if (deleteHome) {
                deleteTree(home);
            }
            stopped.countDown();
        }, "jetsync-es-shutdown"));

        node.start();
        System.out.println("jetsync-es: node started, http on 127.0.0.1:" + httpPort);

        String owner = System.getenv("ES_OWNER_PID");
        if (owner != null && !owner.isEmpty()) {
            ProcessHandle.of(Long.parseLong(owner)).ifPresentOrElse(
                ph -> ph.onExit().thenRun(() -> {
                    System.out.println("jetsync-es: owner process " + owner + " is gone, shutting down");
                    System.exit(0);
                }),
                () -> System.exit(0));
        }
        stopped.await();
    }

    private static void deleteTree(Path dir) {
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException ignored) {
                    // best effort
                }
            });
        } catch (IOException ignored) {
            // best effort
        }
    }

    /** A Node whose plugins are classes on the classpath. */
    static final class ClasspathNode extends Node {
        ClasspathNode(Environment env, List<Class<? extends Plugin>> plugins) {
            super(env, s -> new ClasspathPluginsService(s, env.configFile(), plugins), true);
        }
    }

    /** A PluginsService that loads nothing from disk and instantiates the given classes. */
    static final class ClasspathPluginsService extends PluginsService {
        private final List<LoadedPlugin> loaded;

        ClasspathPluginsService(Settings settings, Path configPath, List<Class<? extends Plugin>> classes) {
            super(settings, configPath, null, null);
            List<LoadedPlugin> list = new ArrayList<>();
            for (Class<? extends Plugin> c : classes) {
                PluginDescriptor descriptor = new PluginDescriptor(
                    c.getName(), "classpath plugin", "NA", Version.CURRENT, "17", c.getName(), null, List.of(),
                    false, false, false, false);
                Plugin instance;
                try {
                    instance = c.getConstructor().newInstance();
                } catch (ReflectiveOperationException e) {
                    throw new IllegalStateException("cannot instantiate plugin " + c.getName(), e);
                }
                list.add(new LoadedPlugin(descriptor, instance));
            }
            this.loaded = List.copyOf(list);
        }

        @Override
        protected List<LoadedPlugin> plugins() {
            return loaded;
        }
    }
}
