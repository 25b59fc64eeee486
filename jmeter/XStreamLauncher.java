/*
 * Start Debian's JMeter 2.13 with JMeter's own classes allowed by XStream.
 *
 * Debian 12 ships XStream 1.4.20, whose security framework denies every type
 * not explicitly allowed. JMeter 2.13 predates that framework and never allows
 * its own classes, so loading any plan fails with
 *   ForbiddenClassException: org.apache.jmeter.save.ScriptWrapper
 * and JMeter still exits 0.
 *
 * This launcher does what org.apache.jmeter.NewDriver.main does (class loader,
 * context class loader, JMeter.start(args)), but first initialises SaveService
 * and allows org.apache.jmeter.** and org.apache.jorphan.** on the two XStream
 * instances it reads plans and XML results with (JMXSAVER, JTLSAVER). Nothing
 * else is allowed: any other type in a plan is still refused.
 *
 * SaveService's static fields read jmeter.properties, so the launcher loads
 * bin/jmeter.properties first (JMeter.start loads it again, with user.properties,
 * -q files and -J overrides, before it runs). Only SaveService's own settings
 * (file_format, saveservice_properties) are taken from jmeter.properties as shipped.
 *
 * Build and run (jmeter/run does both; no JMeter jar is needed to compile):
 *   javac -d jmeter/.build jmeter/XStreamLauncher.java
 *   java -Djmeter.home=/usr/share/jmeter \
 *        -cp /usr/share/jmeter/bin/ApacheJMeter.jar:jmeter/.build XStreamLauncher -n -t plan.jmx ...
 */

import java.io.File;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;

public final class XStreamLauncher {
    static final String[] ALLOWED = {"org.apache.jmeter.**", "org.apache.jorphan.**"};

    private XStreamLauncher() {}

    public static void main(String[] args) throws Exception {
        // NewDriver's static initialiser builds JMeter's class path (lib/, lib/ext/) and loader.
        Class<?> driver = Class.forName("org.apache.jmeter.NewDriver");
        Field loaderField = driver.getDeclaredField("loader");
        loaderField.setAccessible(true);
        ClassLoader loader = (ClassLoader) loaderField.get(null);
        Thread.currentThread().setContextClassLoader(loader);
        String home = (String) driver.getMethod("getJMeterDir").invoke(null);

        Class<?> utils = Class.forName("org.apache.jmeter.util.JMeterUtils", true, loader);
        utils.getMethod("setJMeterHome", String.class).invoke(null, home);
        String properties = home + File.separator + "bin" + File.separator + "jmeter.properties";
        utils.getMethod("loadJMeterProperties", String.class).invoke(null, properties);

        allowJMeterTypes(loader);

        Class<?> jmeter = Class.forName("org.apache.jmeter.JMeter", true, loader);
        Object instance = jmeter.getDeclaredConstructor().newInstance();
        try {
            jmeter.getMethod("start", String[].class).invoke(instance, (Object) args);
        } catch (InvocationTargetException error) {
            error.getCause().printStackTrace();
            System.exit(1);
        }
    }

    static void allowJMeterTypes(ClassLoader loader) throws Exception {
        Class<?> saveService = Class.forName("org.apache.jmeter.save.SaveService", true, loader);
        Class<?> xstream = Class.forName("com.thoughtworks.xstream.XStream", true, loader);
        Method allow = xstream.getMethod("allowTypesByWildcard", String[].class);
        for (String name : new String[] {"JMXSAVER", "JTLSAVER"}) {
            Field field = saveService.getDeclaredField(name);
            field.setAccessible(true);
            allow.invoke(field.get(null), (Object) ALLOWED.clone());
        }
        System.err.println("XStreamLauncher: XStream allows " + String.join(", ", ALLOWED));
    }
}
