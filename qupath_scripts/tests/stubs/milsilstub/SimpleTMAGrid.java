package milsilstub;

import java.util.ArrayList;
import java.util.List;

import qupath.lib.objects.TMACoreObject;
import qupath.lib.objects.hierarchy.TMAGrid;

/** Test plumbing: a TMAGrid that is just a list of cores. */
public class SimpleTMAGrid implements TMAGrid {
    private final List<TMACoreObject> cores;

    public SimpleTMAGrid(List<TMACoreObject> cores) {
        this.cores = new ArrayList<>(cores);
    }

    @Override
    public List<TMACoreObject> getTMACoreList() {
        return new ArrayList<>(cores);
    }
}
