/*
 * MilsilCodec.groovy -- the server's contract read at run time, and messages as plain maps.
 *
 * No generated Java code: the contract is read from the FileDescriptorSet `milsil_v1.desc`
 * (written by `python proto/generate.py`), messages are protobuf DynamicMessages built from
 * and turned back into plain Groovy maps, and gRPC method descriptors are made from the
 * service descriptors. Nothing has to be compiled on the user's machine; only stock
 * grpc-java/protobuf jars are needed. Used by MilsilRpc (the calls) and MilsilClient.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

import com.google.protobuf.ByteString
import com.google.protobuf.CodedInputStream
import com.google.protobuf.DescriptorProtos
import com.google.protobuf.Descriptors
import com.google.protobuf.DynamicMessage
import com.google.protobuf.Message
import io.grpc.MethodDescriptor

import java.nio.ByteBuffer
import java.nio.ByteOrder

class MilsilCodec {

    /** Protobuf wire format <-> DynamicMessage of one message type. */
    static class DynamicMarshaller implements MethodDescriptor.Marshaller<DynamicMessage> {
        final Descriptors.Descriptor type

        DynamicMarshaller(Descriptors.Descriptor type) {
            this.type = type
        }

        InputStream stream(DynamicMessage value) {
            return value.toByteString().newInput()
        }

        DynamicMessage parse(InputStream stream) {
            CodedInputStream input = CodedInputStream.newInstance(stream)
            input.setSizeLimit(Integer.MAX_VALUE)
            return DynamicMessage.parseFrom(type, input)
        }
    }

    final Map<String, Descriptors.ServiceDescriptor> services = [:]
    final Map<String, Descriptors.Descriptor> messages = [:]

    /** The contract of the descriptor set `file` (see findDescriptor). */
    MilsilCodec(File file) {
        loadDescriptors(file)
    }

    /**
     * Where the descriptor set is: the `descriptor` setting, else in the milsil folder `home`
     * (the folder holding lib/: a copy beside lib/, or the repository's proto/ folder).
     */
    static File findDescriptor(String configured, String home) {
        List<File> candidates = []
        if (configured) {
            candidates.add(new File(configured))
        } else {
            List<String> homes = [home, System.getenv('MILSIL_HOME')]
            for (String h : homes) {
                if (h) {
                    candidates.add(new File(h, 'milsil_v1.desc'))
                    candidates.add(new File(h, 'lib/milsil_v1.desc'))
                    candidates.add(new File(new File(h).getAbsoluteFile().getParentFile(), 'proto/milsil_v1.desc'))
                }
            }
        }
        for (File f : candidates) {
            if (f.isFile()) {
                return f
            }
        }
        throw new MilsilFailure('SETUP', 'descriptor file milsil_v1.desc not found (looked at ' +
            candidates.collect { File f -> f.getPath() }.join(', ') +
            '); set descriptor = "/path/to/milsil_v1.desc" in the settings')
    }

    void loadDescriptors(File file) {
        DescriptorProtos.FileDescriptorSet set
        try {
            set = DescriptorProtos.FileDescriptorSet.parseFrom(file.bytes)
        } catch (Exception e) {
            throw new MilsilFailure('SETUP', 'cannot read descriptor set ' + file + ': ' + e.getMessage())
        }
        Map<String, DescriptorProtos.FileDescriptorProto> protos = [:]
        for (DescriptorProtos.FileDescriptorProto p : set.getFileList()) {
            protos.put(p.getName(), p)
        }
        Map<String, Descriptors.FileDescriptor> built = [:]
        for (String name : protos.keySet()) {
            buildFile(name, protos, built)
        }
        for (Descriptors.FileDescriptor fd : built.values()) {
            for (Descriptors.ServiceDescriptor sd : fd.getServices()) {
                services.put(sd.getFullName(), sd)
                services.put(sd.getName(), sd)
            }
            for (Descriptors.Descriptor md : fd.getMessageTypes()) {
                messages.put(md.getFullName(), md)
            }
        }
    }

    static Descriptors.FileDescriptor buildFile(String name,
            Map<String, DescriptorProtos.FileDescriptorProto> protos,
            Map<String, Descriptors.FileDescriptor> built) {
        if (built.containsKey(name)) {
            return built.get(name)
        }
        DescriptorProtos.FileDescriptorProto proto = protos.get(name)
        if (proto == null) {
            throw new MilsilFailure('SETUP', 'descriptor set lacks ' + name + ' (regenerate it with --include_imports)')
        }
        List<Descriptors.FileDescriptor> deps = []
        for (String dep : proto.getDependencyList()) {
            deps.add(buildFile(dep, protos, built))
        }
        Descriptors.FileDescriptor fd = Descriptors.FileDescriptor.buildFrom(proto,
            deps.toArray(new Descriptors.FileDescriptor[deps.size()]))
        built.put(name, fd)
        return fd
    }


    /** A DynamicMessage of `typeName` ("milsil.v1.Tile" or "Tile") from a Groovy map. */
    DynamicMessage message(String typeName, Map values) {
        Descriptors.Descriptor type = messages.get(typeName)
        if (type == null) {
            type = messages.get('milsil.v1.' + typeName)
        }
        if (type == null) {
            throw new IllegalArgumentException('unknown message type ' + typeName)
        }
        return build(type, values)
    }

    static DynamicMessage build(Descriptors.Descriptor type, Map values) {
        DynamicMessage.Builder b = DynamicMessage.newBuilder(type)
        if (values == null) {
            return b.build()
        }
        for (Object entry : values.entrySet()) {
            String key = ((Map.Entry) entry).getKey().toString()
            Object value = ((Map.Entry) entry).getValue()
            if (value == null) {
                continue
            }
            Descriptors.FieldDescriptor f = type.findFieldByName(key)
            if (f == null) {
                throw new IllegalArgumentException(type.getFullName() + ' has no field "' + key +
                    '"; fields: ' + type.getFields().collect { Descriptors.FieldDescriptor x -> x.getName() }.join(', '))
            }
            if (f.isMapField()) {
                Descriptors.Descriptor entryType = f.getMessageType()
                for (Object e : ((Map) value).entrySet()) {
                    Map kv = [key: ((Map.Entry) e).getKey(), value: ((Map.Entry) e).getValue()]
                    b.addRepeatedField(f, build(entryType, kv))
                }
            } else if (f.isRepeated()) {
                for (Object item : (value as List)) {
                    b.addRepeatedField(f, convert(f, item))
                }
            } else {
                b.setField(f, convert(f, value))
            }
        }
        return b.build()
    }

    static Object convert(Descriptors.FieldDescriptor f, Object v) {
        switch (f.getJavaType()) {
            case Descriptors.FieldDescriptor.JavaType.MESSAGE:
                return (v instanceof Message) ? v : build(f.getMessageType(), (Map) v)
            case Descriptors.FieldDescriptor.JavaType.ENUM:
                Descriptors.EnumValueDescriptor ev = (v instanceof Number) ?
                    f.getEnumType().findValueByNumber(((Number) v).intValue()) :
                    f.getEnumType().findValueByName(v.toString())
                if (ev == null) {
                    throw new IllegalArgumentException(f.getFullName() + ': no enum value ' + v)
                }
                return ev
            case Descriptors.FieldDescriptor.JavaType.BYTE_STRING:
                return (v instanceof ByteString) ? v : ByteString.copyFrom((byte[]) v)
            case Descriptors.FieldDescriptor.JavaType.INT:
                return Integer.valueOf(((Number) v).intValue())
            case Descriptors.FieldDescriptor.JavaType.LONG:
                return Long.valueOf(((Number) v).longValue())
            case Descriptors.FieldDescriptor.JavaType.FLOAT:
                return Float.valueOf(((Number) v).floatValue())
            case Descriptors.FieldDescriptor.JavaType.DOUBLE:
                return Double.valueOf(MilsilSettings.num(v))
            case Descriptors.FieldDescriptor.JavaType.BOOLEAN:
                return Boolean.valueOf(v as boolean)
            default:
                return v.toString()
        }
    }

    /** A response as plain Groovy: maps, lists, strings, numbers, enum names, byte[]. */
    static Map toMap(Message m) {
        Map out = new LinkedHashMap()
        for (Descriptors.FieldDescriptor f : m.getDescriptorForType().getFields()) {
            Object v = m.getField(f)
            if (f.isMapField()) {
                Map mm = new LinkedHashMap()
                Descriptors.Descriptor et = f.getMessageType()
                Descriptors.FieldDescriptor kf = et.findFieldByName('key')
                Descriptors.FieldDescriptor vf = et.findFieldByName('value')
                for (Object e : (List) v) {
                    Message em = (Message) e
                    mm.put(plain(kf, em.getField(kf)), plain(vf, em.getField(vf)))
                }
                out.put(f.getName(), mm)
            } else if (f.isRepeated()) {
                List items = []
                for (Object item : (List) v) {
                    items.add(plain(f, item))
                }
                out.put(f.getName(), items)
            } else if (f.getJavaType() == Descriptors.FieldDescriptor.JavaType.MESSAGE) {
                out.put(f.getName(), m.hasField(f) ? toMap((Message) v) : null)
            } else {
                out.put(f.getName(), plain(f, v))
            }
        }
        return out
    }

    static Object plain(Descriptors.FieldDescriptor f, Object v) {
        if (v instanceof Message) {
            return toMap((Message) v)
        }
        if (v instanceof Descriptors.EnumValueDescriptor) {
            return ((Descriptors.EnumValueDescriptor) v).getName()
        }
        if (v instanceof ByteString) {
            return ((ByteString) v).toByteArray()
        }
        return v
    }

    /** The gRPC method descriptor of `service`.`name`, its shape (unary, streaming) from the contract. */
    MethodDescriptor<DynamicMessage, DynamicMessage> method(String service, String name) {
        Descriptors.ServiceDescriptor sd = services.get(service)
        if (sd == null) {
            throw new IllegalArgumentException('unknown service ' + service + '; known: ' + services.keySet())
        }
        Descriptors.MethodDescriptor md = sd.findMethodByName(name)
        if (md == null) {
            throw new IllegalArgumentException(service + ' has no method ' + name)
        }
        MethodDescriptor.MethodType type
        if (md.isClientStreaming()) {
            type = md.isServerStreaming() ? MethodDescriptor.MethodType.BIDI_STREAMING :
                MethodDescriptor.MethodType.CLIENT_STREAMING
        } else {
            type = md.isServerStreaming() ? MethodDescriptor.MethodType.SERVER_STREAMING :
                MethodDescriptor.MethodType.UNARY
        }
        return MethodDescriptor.newBuilder(
            new DynamicMarshaller(md.getInputType()), new DynamicMarshaller(md.getOutputType()))
            .setType(type)
            .setFullMethodName(MethodDescriptor.generateFullMethodName(sd.getFullName(), md.getName()))
            .build()
    }

    Descriptors.Descriptor inputType(String service, String name) {
        return services.get(service).findMethodByName(name).getInputType()
    }

    /** Little-endian float32 bytes -> float[] (empty bytes -> empty array). */
    static float[] floats(byte[] bytes) {
        if (bytes == null) {
            return new float[0]
        }
        float[] out = new float[(int) (bytes.length / 4)]
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out)
        return out
    }

    /** A repeated double field (a list of Doubles) as double[]. */
    static double[] doubles(List values) {
        double[] out = new double[values == null ? 0 : values.size()]
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Number) values.get(i)).doubleValue()
        }
        return out
    }
}
