/*
 * MilsilBags.groovy -- labelled bags of a project for UploadDataset (export_labels.groovy,
 * train_from_project.groovy): classified annotations and classified non-missing TMA cores
 * (each one bag of patches, as the paper crops images exhaustively), and whole images whose
 * project metadata holds a label. Each image is its own patient/group id, so that no image
 * ends up on both sides of a train/validation split. Patches are read by MilsilQuPath.
 * QuPath API used (v0.4 to v0.7): Project.getImageList, ProjectImageEntry.getID/getImageName/
 * getMetadataValue/readImageData, PathObjectHierarchy.getAnnotationObjects/getTMAGrid,
 * TMACoreObject.isMissing, PathObject.getPathClass/getROI/getName, ROI.isArea.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.interfaces.ROI

class MilsilBags {

    /**
     * Labelled bags of one image: classified annotations and classified non-missing TMA
     * cores (each one bag), and/or the whole image when its project metadata has
     * `metadataKey`. Returns maps [bag_id, label, patient_id, tiles, source].
     */
    static List<Map> imageBags(Object client, Map s, String name, Object imageData, Object entry) {
        List<String> sources = MilsilSettings.list(s.get('sources'))
        List<String> ignore = MilsilSettings.list(s.get('ignoreClasses'))
        double ds = MilsilSettings.num(s.get('downsample'))
        int patch = MilsilSettings.integer(s.get('patchSize'))
        int maxPatches = MilsilSettings.integer(s.get('maxPatchesPerBag'))
        Object server = imageData.getServer()
        def hierarchy = imageData.getHierarchy()
        List<Map> bags = []
        List<PathObject> candidates = []
        if (sources.contains('annotations')) {
            candidates.addAll(hierarchy.getAnnotationObjects())
        }
        if (sources.contains('tma') && hierarchy.getTMAGrid() != null) {
            for (Object core : hierarchy.getTMAGrid().getTMACoreList()) {
                if (!core.isMissing()) {
                    candidates.add((PathObject) core)
                }
            }
        }
        int index = 0
        for (PathObject o : candidates) {
            PathClass pc = o.getPathClass()
            ROI roi = o.getROI()
            if (pc == null || roi == null || !roi.isArea() || ignored(pc.toString(), ignore)) {
                continue
            }
            List<Map> tiles = MilsilQuPath.patchTiles(client, server, roi, ds, patch, maxPatches)
            if (!tiles.isEmpty()) {
                String kind = o.getClass().getSimpleName().contains('TMA') ? 'core' : 'annotation'
                bags.add([bag_id: name + '#' + kind + '-' + bagKey(index, o.getName()), label: pc.toString(),
                          patient_id: name, tiles: tiles, source: kind])
            }
            index++
        }
        if (sources.contains('metadata') && entry != null) {
            String label = entry.getMetadataValue((String) s.get('metadataKey'))
            if (label) {
                List<Map> tiles = MilsilQuPath.patchTiles(client, server, null, ds, patch, maxPatches)
                if (!tiles.isEmpty()) {
                    bags.add([bag_id: name + '#image', label: label.trim(), patient_id: name,
                              tiles: tiles, source: 'image'])
                }
            }
        }
        return bags
    }

    /**
     * The per-image part of a bag id: always the candidate's index (the server merges
     * consecutive messages with the same bag_id, so two objects with one name must differ),
     * plus the object's name when it has one.
     */
    static String bagKey(int index, String name) {
        return 'bag-' + index + (name ? '-' + name : '')
    }

    static boolean ignored(String name, List<String> patterns) {
        for (String p : patterns) {
            if (p.endsWith('*') ? name.startsWith(p.substring(0, p.length() - 1)) : name == p) {
                return true
            }
        }
        return false
    }

    /**
     * Bags of every image of the project (or of the current image when there is no project).
     * The open image is read from memory (unsaved changes count); the others are opened with
     * ProjectImageEntry.readImageData and closed again.
     */
    static List<Map> projectBags(Object client, Map s, Object project, Object currentEntry, Object currentData, Closure log) {
        List<Map> bags = []
        if (project == null) {
            String name = MilsilQuPath.imageName(null, currentData)
            bags.addAll(imageBags(client, s, name, currentData, null))
            return bags
        }
        for (Object entry : project.getImageList()) {
            boolean current = currentEntry != null && entry.getID() == currentEntry.getID()
            Object data = current ? currentData : entry.readImageData()
            try {
                List<Map> found = imageBags(client, s, entry.getImageName(), data, entry)
                bags.addAll(found)
                if (!found.isEmpty()) {
                    log.call(entry.getImageName() + ': ' + found.size() + ' bag(s)')
                }
            } finally {
                if (!current) {
                    data.getServer().close()
                }
            }
        }
        return bags
    }

    /** Streams bags to UploadDataset, `perMessage` tiles per message; returns the Dataset map. */
    static Map upload(Object client, String displayName, List<Map> bags, int perMessage) {
        return client.uploadDataset(displayName, { Closure sendBag ->
            for (Map bag : bags) {
                List<Map> tiles = (List<Map>) bag.get('tiles')
                for (int i = 0; i < tiles.size(); i += perMessage) {
                    sendBag.call([bag_id: bag.get('bag_id'), label: bag.get('label'), patient_id: bag.get('patient_id'),
                                  tiles: tiles.subList(i, Math.min(tiles.size(), i + perMessage))])
                }
            }
        })
    }

}
