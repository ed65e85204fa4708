// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.content;

import android.content.pm.ApplicationInfo;
import android.content.res.AssetManager;
import java.io.File;

public abstract class Context {
    public abstract AssetManager getAssets();
    public abstract ContentResolver getContentResolver();
    public abstract File getFilesDir();
    public abstract File getCacheDir();
    public abstract ApplicationInfo getApplicationInfo();
    public abstract String getPackageName();
    public abstract Context getApplicationContext();
}
