// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.os;

public class Build {
    public static final String MANUFACTURER = null;
    public static final String MODEL = null;
    public static final String HARDWARE = null;
    public static final String SOC_MANUFACTURER = null;
    public static final String SOC_MODEL = null;

    public static class VERSION {
        public static final int SDK_INT = 0;
    }

    public static class VERSION_CODES {
        public static final int P = 28;
        public static final int S = 31;
    }
}
