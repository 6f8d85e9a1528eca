package qupath.lib.objects.hierarchy;

import java.util.List;

import qupath.lib.objects.TMACoreObject;

/** Stand-in for qupath.lib.objects.hierarchy.TMAGrid (QuPath v0.5/v0.6, an interface). */
public interface TMAGrid {
    /** QuPath: public List&lt;TMACoreObject&gt; getTMACoreList(). */
    List<TMACoreObject> getTMACoreList();
}
