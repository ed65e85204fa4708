// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.content;

import android.content.pm.ApplicationInfo;
import android.content.res.AssetManager;
import java.io.File;

public class ContextWrapper extends Context {
    public ContextWrapper(Context base) { throw new RuntimeException("Stub!"); }
    public AssetManager getAssets() { throw new RuntimeException("Stub!"); }
    public ContentResolver getContentResolver() { throw new RuntimeException("Stub!"); }
    public File getFilesDir() { throw new RuntimeException("Stub!"); }
    public File getCacheDir() { throw new RuntimeException("Stub!"); }
    public ApplicationInfo getApplicationInfo() { throw new RuntimeException("Stub!"); }
    public String getPackageName() { throw new RuntimeException("Stub!"); }
    public Context getApplicationContext() { throw new RuntimeException("Stub!"); }
}
