// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.app;

import android.content.Context;

public class Instrumentation {
    public Instrumentation() { throw new RuntimeException("Stub!"); }
    public Context getContext() { throw new RuntimeException("Stub!"); }
    public Context getTargetContext() { throw new RuntimeException("Stub!"); }
}
