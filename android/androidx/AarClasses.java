// Copies the classes (and Kotlin module files) inside each AAR's classes.jar into one directory, so a plain Maven
// build can compile and test against AndroidX libraries that are only published as AARs.
// Run by this module's build (pom.xml) as a single-file Java program: `AarClasses.java
// <folder of .aar files> <classes folder>`. Only the JDK is needed.

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.stream.Stream;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

public class AarClasses {
    public static void main(String[] args) throws IOException {
        Path aars = Path.of(args[0]);
        Path out = Path.of(args[1]);
        List<Path> files;
        try (Stream<Path> s = Files.list(aars)) {
            files = s.filter(p -> p.toString().endsWith(".aar")).sorted().toList();
        }
        int classes = 0;
        for (Path aar : files) {
            try (ZipFile zip = new ZipFile(aar.toFile())) {
                ZipEntry inner = zip.getEntry("classes.jar");
                if (inner == null) continue; // a resources-only AAR
                try (ZipInputStream jar = new ZipInputStream(zip.getInputStream(inner))) {
                    classes += copyClasses(jar, out);
                }
            }
        }
        System.out.println("AarClasses: " + classes + " classes from " + files.size() + " AARs");
    }

    private static int copyClasses(ZipInputStream jar, Path out) throws IOException {
        int n = 0;
        for (ZipEntry e; (e = jar.getNextEntry()) != null; ) {
            String name = e.getName();
            // Kotlin finds top-level functions (OneTimeWorkRequestBuilder, ...) through the
            // .kotlin_module files, so those come along with the classes.
            boolean wanted = name.endsWith(".class") || name.endsWith(".kotlin_module");
            if (e.isDirectory() || !wanted || name.equals("module-info.class")) continue;
            Path target = out.resolve(name).normalize();
            if (!target.startsWith(out)) throw new IOException("entry outside the output: " + name);
            Files.createDirectories(target.getParent());
            Files.copy((InputStream) jar, target, StandardCopyOption.REPLACE_EXISTING);
            n++;
        }
        return n;
    }
}
