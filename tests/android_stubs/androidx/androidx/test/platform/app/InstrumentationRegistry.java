// API stub of AndroidX Test (androidx.test:runner 1.6.2, androidx.test.ext:junit 1.2.1), for compile
// checks of the instrumented test only. Written from the published Java sources:
//   repo   github.com/android/android-test
//   commit b28004ebf8f1109ad2108a40511354bedf44aaff (tag axt_2025_03_24, the first release tag after
//          runner 1.6.2 / ext-junit 1.2.1; these members are the same at axt_2024_05_30 and at main
//          75240e8c0a23345deba7f2acb984db6551d781c6)
// Bodies throw.
package androidx.test.platform.app;

import android.app.Instrumentation;

public final class InstrumentationRegistry {
    private InstrumentationRegistry() {}
    public static Instrumentation getInstrumentation() { throw new RuntimeException("Stub!"); }
}
