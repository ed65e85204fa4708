// API stub of AndroidX Test (androidx.test:runner 1.6.2, androidx.test.ext:junit 1.2.1), for compile
// checks of the instrumented test only. Written from the published Java sources:
//   repo   github.com/android/android-test
//   commit b28004ebf8f1109ad2108a40511354bedf44aaff (tag axt_2025_03_24, the first release tag after
//          runner 1.6.2 / ext-junit 1.2.1; these members are the same at axt_2024_05_30 and at main
//          75240e8c0a23345deba7f2acb984db6551d781c6)
// Bodies throw.
package androidx.test.ext.junit.runners;

import org.junit.runner.Description;
import org.junit.runner.Runner;
import org.junit.runner.manipulation.Filter;
import org.junit.runner.manipulation.Filterable;
import org.junit.runner.manipulation.NoTestsRemainException;
import org.junit.runner.manipulation.Sortable;
import org.junit.runner.manipulation.Sorter;
import org.junit.runner.notification.RunNotifier;
import org.junit.runners.model.InitializationError;

public final class AndroidJUnit4 extends Runner implements Filterable, Sortable {
    public AndroidJUnit4(Class<?> klass) throws InitializationError { throw new RuntimeException("Stub!"); }
    public Description getDescription() { throw new RuntimeException("Stub!"); }
    public void run(RunNotifier runNotifier) { throw new RuntimeException("Stub!"); }
    public void filter(Filter filter) throws NoTestsRemainException { throw new RuntimeException("Stub!"); }
    public void sort(Sorter sorter) { throw new RuntimeException("Stub!"); }
}
