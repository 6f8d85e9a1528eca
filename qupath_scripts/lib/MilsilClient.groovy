/*
 * MilsilClient.groovy -- the one gRPC client every milsil QuPath script shares.
 *
 * Why it looks like this:
 *  - No generated Java code: the server's contract is read at run time from the
 *    FileDescriptorSet `milsil_v1.desc` (written by `python proto/generate.py`) and messages
 *    are protobuf DynamicMessages built from and turned back into plain Groovy maps. Nothing
 *    has to be compiled on the user's machine; only stock grpc-java jars are needed.
 *  - One source for QuPath 0.5 (Groovy 4.0.15, Java 17), QuPath 0.6 (Groovy 4.0.26, Java 21)
 *    and Debian's Groovy 2.4 (CI): no lambdas, no `var`, no Groovy-4-only syntax, getters
 *    called explicitly (Groovy 4 resolves some properties differently), no groovy.json
 *    (a separate module that a bare Groovy 4 jar does not contain).
 *  - Every call has a deadline; inbound messages may be up to `maxMessageMb`; the bearer token
 *    travels as `authorization` metadata; TLS (optionally mutual) when a CA file is given.
 *  - Every failure becomes one line, "milsil: <CODE>: <what the server said>", through
 *    MilsilClient.describe(Throwable), which scripts print in QuPath's log.
 *  - Busy is not failure: a call the server refuses as busy (RESOURCE_EXHAUSTED with the
 *    trailing metadata `milsil-retry: busy`, or gRPC's own "Concurrent RPC limit exceeded!")
 *    is retried after a jittered exponential backoff until the call's deadline, printing a
 *    waiting line through `onWait` (scripts set it to their println); `milsil-retry: never`
 *    (too large) fails at once. A Heatmap waiting for compute prints its queue position.
 *    The contract is documented in proto/milsil/v1/inference_service.proto.
 *
 * Scripts load it through lib/MilsilBootstrap.groovy (GroovyClassLoader.parseClass) and use
 * it dynamically:
 *     def client = MilsilClient.connect([server: 'localhost:50051', token: '...'])
 *     def models = client.listModels()
 *     client.close()
 */

import com.google.protobuf.ByteString
import com.google.protobuf.CodedInputStream
import com.google.protobuf.DescriptorProtos
import com.google.protobuf.Descriptors
import com.google.protobuf.DynamicMessage
import com.google.protobuf.Message
import io.grpc.CallOptions
import io.grpc.Channel
import io.grpc.ChannelCredentials
import io.grpc.ClientCall
import io.grpc.ClientInterceptors
import io.grpc.InsecureChannelCredentials
import io.grpc.ManagedChannel
import io.grpc.Metadata
import io.grpc.MethodDescriptor
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.StatusRuntimeException
import io.grpc.TlsChannelCredentials
import io.grpc.stub.ClientCallStreamObserver
import io.grpc.stub.ClientCalls
import io.grpc.stub.MetadataUtils
import io.grpc.stub.StreamObserver

import java.awt.image.BufferedImage
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Random
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

class MilsilClient {

    /** Settings every script understands, with their defaults. */
    static final Map DEFAULTS = [
        server               : 'localhost:50051',
        token                : '',
        trustCert            : '',
        clientCert           : '',
        clientKey            : '',
        descriptor           : '',
        home                 : '',
        timeoutSeconds       : 60,
        streamTimeoutSeconds : 900,
        watchTimeoutSeconds  : 86400,
        maxMessageMb         : 64,
        retryBusy            : true,
    ]

    /** Trailing-metadata key of the server's RESOURCE_EXHAUSTED: "busy" (retry) or "never". */
    static final Metadata.Key<String> RETRY_KEY = Metadata.Key.of('milsil-retry', Metadata.ASCII_STRING_MARSHALLER)
    /** What gRPC itself says when all of the server's RPC threads are taken (busy too). */
    static final String GRPC_CONCURRENCY_LIMIT = 'Concurrent RPC limit exceeded!'
    /** Backoff: a uniform delay up to min(MAX, FIRST * 2^attempt) seconds ("full jitter"). */
    static final double FIRST_DELAY_SECONDS = 0.2d
    static final double MAX_DELAY_SECONDS = 5.0d
    /** Time kept for the final try of a busy call: waits end this long before the deadline. */
    static final double LAST_TRY_SECONDS = 0.1d

    /** A failure already rendered as the one line a user sees. */
    static class Failure extends RuntimeException {
        final String code
        final String detail
        /** The server was busy: the same call may succeed later. */
        final boolean busy

        Failure(String code, String message) {
            this(code, message, false)
        }

        Failure(String code, String message, boolean busy) {
            super('milsil: ' + code + ': ' + oneLine(message))
            this.code = code
            this.detail = oneLine(message)
            this.busy = busy
        }
    }

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

    /** Receives a call's responses on gRPC's threads; the script thread takes them in order. */
    static class Collector implements StreamObserver<DynamicMessage> {
        static final Object END = new Object()
        final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<Object>()
        volatile Throwable error = null
        volatile boolean done = false

        void onNext(DynamicMessage value) {
            queue.put(value)
        }

        void onError(Throwable t) {
            error = t
            done = true
            queue.put(END)
        }

        void onCompleted() {
            done = true
            queue.put(END)
        }

        /** The next response, or null at the end; throws the call's error. */
        DynamicMessage next(long waitMillis) {
            Object item = queue.poll(waitMillis, TimeUnit.MILLISECONDS)
            if (item == null) {
                throw new Failure('DEADLINE_EXCEEDED', 'no answer from the server in time')
            }
            if (item.is(END)) {
                queue.put(END)
                if (error != null) {
                    throw error
                }
                return null
            }
            return (DynamicMessage) item
        }
    }

    final String target
    final Map settings
    final ManagedChannel managed
    final Channel channel
    final Map<String, Descriptors.ServiceDescriptor> services = [:]
    final Map<String, Descriptors.Descriptor> messages = [:]
    final Random random = new Random()
    /** Gets every waiting line ("milsil: waiting: ..."); null prints to standard output. */
    Closure onWait = null

    // ------------------------------------------------------------------ connecting

    /**
     * Open a channel. `options` uses the keys of DEFAULTS; Java system properties
     * `milsil.<key>` override them (for headless and test runs), and an empty token falls back
     * to the MILSIL_TOKEN environment variable so that tokens need not live in scripts.
     */
    static MilsilClient connect(Map options) {
        Map s = withOverrides(options)
        return new MilsilClient(s)
    }

    /** `options` merged over DEFAULTS, then system-property overrides; token from env if empty. */
    static Map withOverrides(Map options) {
        Map s = new LinkedHashMap(DEFAULTS)
        if (options != null) {
            s.putAll(options)
        }
        for (Object key : new ArrayList(s.keySet())) {
            String override = System.getProperty('milsil.' + key)
            if (override != null) {
                s.put(key, override)
            }
        }
        if (!s.get('token')) {
            String env = System.getenv('MILSIL_TOKEN')
            s.put('token', env == null ? '' : env)
        }
        return s
    }

    MilsilClient(Map s) {
        settings = s
        target = (s.get('server') ?: '').toString().trim()
        if (!target) {
            throw new Failure('SETUP', 'no server address; set server = "host:port" in the settings')
        }
        loadDescriptors(findDescriptor((s.get('descriptor') ?: '') as String, (s.get('home') ?: '') as String))
        managed = buildChannel(s)
        String token = (s.get('token') ?: '').toString()
        if (token) {
            Metadata headers = new Metadata()
            headers.put(Metadata.Key.of('authorization', Metadata.ASCII_STRING_MARSHALLER),
                'Bearer ' + token)
            channel = ClientInterceptors.intercept(managed,
                MetadataUtils.newAttachHeadersInterceptor(headers))
        } else {
            channel = managed
        }
    }

    void close() {
        managed.shutdownNow()
        try {
            managed.awaitTermination(5, TimeUnit.SECONDS)
        } catch (InterruptedException ignored) {
            Thread.currentThread().interrupt()
        }
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
        throw new Failure('SETUP', 'descriptor file milsil_v1.desc not found (looked at ' +
            candidates.collect { File f -> f.getPath() }.join(', ') +
            '); set descriptor = "/path/to/milsil_v1.desc" in the settings')
    }

    void loadDescriptors(File file) {
        DescriptorProtos.FileDescriptorSet set
        try {
            set = DescriptorProtos.FileDescriptorSet.parseFrom(file.bytes)
        } catch (Exception e) {
            throw new Failure('SETUP', 'cannot read descriptor set ' + file + ': ' + e.getMessage())
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
            throw new Failure('SETUP', 'descriptor set lacks ' + name + ' (regenerate it with --include_imports)')
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

    static ManagedChannel buildChannel(Map s) {
        Class builderClass = null
        List<String> names = ['io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder',
                              'io.grpc.netty.NettyChannelBuilder']
        List<ClassLoader> loaders = [MilsilClient.class.getClassLoader(),
                                     Thread.currentThread().getContextClassLoader()]
        for (String n : names) {
            for (ClassLoader l : loaders) {
                if (builderClass == null && l != null) {
                    try {
                        builderClass = Class.forName(n, true, l)
                    } catch (ClassNotFoundException ignored) {
                        builderClass = null
                    } catch (LinkageError ignored) {
                        builderClass = null
                    }
                }
            }
        }
        if (builderClass == null) {
            throw new Failure('SETUP', 'grpc-netty (or grpc-netty-shaded) is not on the class path; ' +
                'copy the jars listed in qupath_scripts/README.md into QuPath\'s extensions folder')
        }
        ChannelCredentials credentials
        String trust = (s.get('trustCert') ?: '').toString()
        if (trust) {
            File ca = new File(trust)
            if (!ca.isFile()) {
                throw new Failure('SETUP', 'trustCert file not found: ' + trust)
            }
            TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(ca)
            String cert = (s.get('clientCert') ?: '').toString()
            String key = (s.get('clientKey') ?: '').toString()
            if (cert || key) {
                if (!(new File(cert).isFile() && new File(key).isFile())) {
                    throw new Failure('SETUP', 'clientCert and clientKey must both name PEM files, got "' +
                        cert + '" and "' + key + '"')
                }
                tls.keyManager(new File(cert), new File(key))
            }
            credentials = tls.build()
        } else {
            credentials = InsecureChannelCredentials.create()
        }
        String target = s.get('server').toString().trim()
        def builder
        try {
            builder = builderClass.forTarget(target, credentials)
        } catch (UnsupportedOperationException e) {
            if (trust && String.valueOf(e.getMessage()).contains('ALPN')) {
                // Debian's libnetty-java is built without ALPN, which gRPC over TLS needs.
                throw new Failure('SETUP', 'TLS needs ALPN, which this netty build lacks (' + e.getMessage() +
                    '); use grpc-netty-shaded from Maven Central as listed in qupath_scripts/README.md')
            }
            throw e
        }
        builder.maxInboundMessageSize((int) (toDouble(s.get('maxMessageMb')) * 1024 * 1024))
        return (ManagedChannel) builder.build()
    }

    // ------------------------------------------------------------------ messages

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
                return Double.valueOf(toDouble(v))
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

    // ------------------------------------------------------------------ calls

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

    CallOptions options(Object seconds) {
        long nanos = (long) (toDouble(seconds) * 1e9d)
        return CallOptions.DEFAULT.withDeadlineAfter(Math.max(1L, nanos), TimeUnit.NANOSECONDS)
    }

    Descriptors.Descriptor inputType(String service, String name) {
        return services.get(service).findMethodByName(name).getInputType()
    }

    /** Unary call: request map in, response map out. */
    Map call(String service, String name, Map request, Object timeoutSeconds = null) {
        Object seconds = timeoutSeconds == null ? settings.get('timeoutSeconds') : timeoutSeconds
        MethodDescriptor<DynamicMessage, DynamicMessage> m = method(service, name)
        DynamicMessage req = build(inputType(service, name), request)
        return (Map) retrying(name, seconds, { double left ->
            try {
                return toMap(ClientCalls.blockingUnaryCall(channel, m, options(left), req))
            } catch (Throwable t) {
                throw failure(t, seconds)
            }
        })
    }

    /** Server-streaming call: `onMessage(Map)` for every response; returns how many came. */
    int serverStream(String service, String name, Map request, Object timeoutSeconds, Closure onMessage) {
        MethodDescriptor<DynamicMessage, DynamicMessage> m = method(service, name)
        DynamicMessage req = build(inputType(service, name), request)
        return (int) retrying(name, timeoutSeconds, { double left ->
            int count = 0
            try {
                Iterator<DynamicMessage> it = ClientCalls.blockingServerStreamingCall(channel, m,
                    options(left), req)
                while (it.hasNext()) {
                    onMessage.call(toMap(it.next()))
                    count++
                }
            } catch (Throwable t) {
                throw failure(t, timeoutSeconds)
            }
            return count
        })
    }

    /**
     * Client-streaming call. `producer` is called with a `send(Map)` closure and sends the
     * requests one by one (so tiles are read from the slide only as fast as they are sent);
     * send() waits for gRPC flow control and stops early once the server has failed.
     */
    Map clientStream(String service, String name, Object timeoutSeconds, Closure producer) {
        Map result = null
        streamCall(service, name, timeoutSeconds, producer, { Map r -> result = r })
        if (result == null) {
            throw new Failure('INTERNAL', service + '.' + name + ' ended without a response')
        }
        return result
    }

    /** Bidirectional call: requests from `producer` as above, `onMessage(Map)` per response. */
    int bidiStream(String service, String name, Object timeoutSeconds, Closure producer, Closure onMessage) {
        return streamCall(service, name, timeoutSeconds, producer, onMessage)
    }

    int streamCall(String service, String name, Object timeoutSeconds, Closure producer, Closure onMessage) {
        return (int) retrying(name, timeoutSeconds, { double left ->
            return streamOnce(service, name, left, timeoutSeconds, producer, onMessage)
        })
    }

    /** One attempt of a client- or bidi-streaming call with `seconds` left. */
    int streamOnce(String service, String name, double seconds, Object timeoutSeconds, Closure producer,
                   Closure onMessage) {
        MethodDescriptor<DynamicMessage, DynamicMessage> m = method(service, name)
        Descriptors.Descriptor input = inputType(service, name)
        long deadline = System.nanoTime() + (long) (seconds * 1e9d)
        ClientCall<DynamicMessage, DynamicMessage> call = channel.newCall(m, options(seconds))
        Collector collector = new Collector()
        StreamObserver<DynamicMessage> requests
        if (m.getType() == MethodDescriptor.MethodType.BIDI_STREAMING) {
            requests = ClientCalls.asyncBidiStreamingCall(call, collector)
        } else {
            requests = ClientCalls.asyncClientStreamingCall(call, collector)
        }
        ClientCallStreamObserver<DynamicMessage> flow = (ClientCallStreamObserver<DynamicMessage>) requests
        int count = 0
        Closure send = { Map msg ->
            DynamicMessage dm = build(input, msg)
            while (!flow.isReady() && !collector.done) {
                if (System.nanoTime() > deadline) {
                    break
                }
                Thread.sleep(1)
            }
            if (collector.done) {
                // The server already answered (an error, usually): stop reading pixels.
                throw new EarlyEnd()
            }
            requests.onNext(dm)
            // Answers that came meanwhile (a bidi call's) are handled now, not held until
            // the last request: memory stays bounded however long the stream.
            Object ready
            while ((ready = collector.queue.peek()) != null && !ready.is(Collector.END)) {
                collector.queue.poll()
                onMessage.call(toMap((DynamicMessage) ready))
                count++
            }
        }
        try {
            try {
                producer.call(send)
                requests.onCompleted()
            } catch (EarlyEnd ignored) {
                requests.onCompleted()
            } catch (Throwable t) {
                requests.onError(t)
                throw t
            }
            long waitMillis = Math.max(1000L, (long) ((deadline - System.nanoTime()) / 1e6d) + 5000L)
            while (true) {
                DynamicMessage r = collector.next(waitMillis)
                if (r == null) {
                    break
                }
                onMessage.call(toMap(r))
                count++
            }
        } catch (Throwable t) {
            throw failure(t, timeoutSeconds)
        }
        return count
    }

    /**
     * `attempt(secondsLeft)` again while the server answers busy and the deadline of
     * `timeoutSeconds` allows: a jittered exponential backoff, one waiting line per retry.
     * The server sends busy before any result (queue and progress messages may come first).
     */
    Object retrying(String what, Object timeoutSeconds, Closure attempt) {
        long started = System.nanoTime()
        long deadline = started + (long) (toDouble(timeoutSeconds) * 1e9d)
        int n = 0
        while (true) {
            // The first try gets the caller's deadline exactly (a tiny one must still expire).
            double left = n == 0 ? toDouble(timeoutSeconds) : Math.max(1e-9d, (deadline - System.nanoTime()) / 1e9d)
            Failure f
            try {
                return attempt.call(left)
            } catch (Throwable t) {
                f = failure(t, timeoutSeconds)
            }
            if (!f.busy || !flag(settings.get('retryBusy'))) {
                throw f
            }
            double delay = random.nextDouble() * Math.min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * Math.pow(2.0d, n))
            n++
            // The last try still runs before the deadline: a wait that would pass it is
            // shortened; with too little time left for a try the busy answer is the result.
            double remaining = (deadline - System.nanoTime()) / 1e9d
            if (remaining <= LAST_TRY_SECONDS) {
                long waited = Math.round((System.nanoTime() - started) / 1e9d)
                throw new Failure(f.code, f.detail + ' (still busy after waiting ' + waited +
                    ' s; raise the timeout in the settings to wait longer)', true)
            }
            delay = Math.min(delay, remaining - LAST_TRY_SECONDS)
            String why = f.detail.startsWith('server busy') ? f.detail : 'server busy (' + f.detail + ')'
            waitLine(what + ': ' + why + '; retrying in ' + String.format(Locale.ROOT, '%.1f', delay) + ' s')
            Thread.sleep(Math.max(1L, (long) (delay * 1000d)))
        }
    }

    /** Print (or hand to `onWait`) one "milsil: waiting: ..." line. */
    void waitLine(String line) {
        String text = 'milsil: waiting: ' + line
        if (onWait != null) {
            onWait.call(text)
        } else {
            System.out.println(text)
        }
    }

    static boolean flag(Object v) {
        if (v == null) {
            return true
        }
        if (v instanceof Boolean) {
            return (Boolean) v
        }
        String s = v.toString().trim().toLowerCase()
        return !(s == 'false' || s == '0' || s == 'no')
    }

    /** Thrown inside send() when the server ended the call; never escapes streamCall. */
    static class EarlyEnd extends RuntimeException {
        EarlyEnd() {
            super('server ended the call', null, false, false)
        }
    }

    // ------------------------------------------------------------------ the milsil API

    /** grpc.health.v1 status of the server ("SERVING"). Exempt from the token. */
    String health() {
        return call('grpc.health.v1.Health', 'Check', [service: ''], 10).get('status')
    }

    List<Map> listModels() {
        return (List<Map>) call('ModelService', 'ListModels', [page_size: 1000]).get('models')
    }

    Map getModel(String name) {
        return call('ModelService', 'GetModel', [name: modelName(name)])
    }

    /** Exports a model's checkpoint to `out` (server streaming); returns the model map. */
    Map exportModel(String name, OutputStream out) {
        Map model = null
        serverStream('ModelService', 'ExportModel', [name: modelName(name)],
            settings.get('streamTimeoutSeconds'), { Map r ->
                if (r.get('model') != null) {
                    model = (Map) r.get('model')
                }
                out.write((byte[]) r.get('chunk_data'))
            })
        return model
    }

    /** ClassifyBag: `tiles` (maps from rgbTile) streamed in messages of `perMessage` tiles. */
    Map classifyBag(String model, List<Map> tiles, int perMessage = 32) {
        return clientStream('InferenceService', 'ClassifyBag', settings.get('streamTimeoutSeconds'), { Closure send ->
            boolean first = true
            for (int i = 0; i < tiles.size(); i += perMessage) {
                Map msg = [tiles: tiles.subList(i, Math.min(tiles.size(), i + perMessage))]
                if (first) {
                    msg.put('model', modelName(model))
                    first = false
                }
                send.call(msg)
            }
            if (first) {
                send.call([model: modelName(model)])
            }
        })
    }

    /** Annotate: `config` is an AnnotateConfig map; `tileProducer(sendTile)` sends tile maps. */
    Map annotate(Map config, Closure tileProducer) {
        return clientStream('InferenceService', 'Annotate', settings.get('streamTimeoutSeconds'), { Closure send ->
            send.call([config: config])
            tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
        })
    }

    /**
     * Heatmap (bidirectional): returns [header: Map, tiles: List<Map>] where each tile has
     * float arrays `logits` / `probabilities` decoded to float[] (C order [class][row][col]).
     * With `onTile`, each tile goes to onTile(header, tile) as it arrives (while tiles are
     * still being sent) and none is kept: `tiles` is then empty.
     */
    Map heatmap(Map config, Closure tileProducer, Closure onTile = null) {
        Map header = null
        List<Map> tiles = []
        bidiStream('InferenceService', 'Heatmap', settings.get('streamTimeoutSeconds'), { Closure send ->
            send.call([config: config])
            tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
        }, { Map r ->
            if (r.get('queue') != null) {
                Map q = (Map) r.get('queue')
                waitLine('Heatmap: queued for compute, position ' + q.get('position') + ' of ' + q.get('waiting'))
            } else if (r.get('header') != null) {
                header = (Map) r.get('header')
            } else if (r.get('tile') != null) {
                Map t = (Map) r.get('tile')
                t.put('logits', floats((byte[]) t.get('logits')))
                t.put('probabilities', floats((byte[]) t.get('probabilities')))
                if (onTile != null) {
                    onTile.call(header, t)
                } else {
                    tiles.add(t)
                }
            }
        })
        return [header: header, tiles: tiles]
    }

    /**
     * MeasureObjects (bidirectional): per-object measurements on the stride-1 logit heatmap
     * of a region. `config` is a MeasureObjectsConfig map (model, region, slide_path);
     * `objects` a list of [id: String, geometry: GeoJSON geometry JSON text] maps, sent
     * `perMessage` to a message before any tile; `tileProducer(sendTile)` sends the region's
     * tiles (with context, row order, as for heatmap()), or is null when `config.slide_path`
     * names a slide the server reads itself. Each measurement goes to
     * onMeasurement(header, m) with m = [id, mean_logits, max_logits, probabilities: double[]
     * in header.class_names order, pixels: long]; without `onMeasurement` they are returned.
     * Returns [header: Map, measurements: List<Map>] (measurements empty with onMeasurement).
     * A call retried after "busy" sends everything again: `onStart()` (optional) hears of
     * each attempt, so a caller can drop what an earlier attempt delivered.
     */
    Map measureObjects(Map config, List<Map> objects, Closure tileProducer, Closure onMeasurement = null,
                       Closure onStart = null, int perMessage = 256) {
        Map header = null
        List<Map> measurements = []
        int batch = Math.max(1, perMessage)
        bidiStream('InferenceService', 'MeasureObjects', settings.get('streamTimeoutSeconds'), { Closure send ->
            header = null
            measurements.clear()
            if (onStart != null) {
                onStart.call()
            }
            send.call([config: config])
            for (int i = 0; i < objects.size(); i += batch) {
                send.call([objects: objects.subList(i, Math.min(objects.size(), i + batch))])
            }
            if (tileProducer != null) {
                tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
            }
        }, { Map r ->
            if (r.get('queue') != null) {
                Map q = (Map) r.get('queue')
                waitLine('MeasureObjects: queued for compute, position ' + q.get('position') + ' of ' +
                    q.get('waiting'))
            } else if (r.get('header') != null) {
                header = (Map) r.get('header')
            } else if (r.get('measurements') != null) {
                for (Object o : (List) ((Map) r.get('measurements')).get('objects')) {
                    Map m = (Map) o
                    Map plain = [id           : m.get('id'),
                                 mean_logits  : doubles((List) m.get('mean_logits')),
                                 max_logits   : doubles((List) m.get('max_logits')),
                                 probabilities: doubles((List) m.get('probabilities')),
                                 pixels       : ((Number) m.get('pixels')).longValue()]
                    if (onMeasurement != null) {
                        onMeasurement.call(header, plain)
                    } else {
                        measurements.add(plain)
                    }
                }
            }
        })
        if (header == null) {
            throw new Failure('INTERNAL', 'MeasureObjects ended without a header')
        }
        return [header: header, measurements: measurements]
    }

    /**
     * AnnotateSlide (server streaming): a slide the server reads itself. `request` is an
     * AnnotateSlideRequest map; onProgress(Map) gets every SlideProgress. Returns the
     * AnnotateSlideResult map (geojson, object_count, summary).
     */
    Map annotateSlide(Map request, Closure onProgress) {
        Map result = null
        serverStream('InferenceService', 'AnnotateSlide', request, settings.get('streamTimeoutSeconds'), { Map r ->
            if (r.get('progress') != null) {
                onProgress.call((Map) r.get('progress'))
            } else if (r.get('result') != null) {
                result = (Map) r.get('result')
            }
        })
        if (result == null) {
            throw new Failure('INTERNAL', 'AnnotateSlide ended without a result')
        }
        return result
    }

    /** UploadDataset: `bagProducer(sendBag)`; each bag map: bag_id, label, patient_id, tiles. */
    Map uploadDataset(String displayName, Closure bagProducer) {
        return clientStream('TrainingService', 'UploadDataset', settings.get('streamTimeoutSeconds'), { Closure send ->
            boolean first = true
            bagProducer.call({ Map bag ->
                Map msg = [bags: [bag]]
                if (first) {
                    msg.put('display_name', displayName)
                    first = false
                }
                send.call(msg)
            })
            if (first) {
                send.call([display_name: displayName])
            }
        })
    }

    Map startTraining(String dataset, Map config, String displayName) {
        return call('TrainingService', 'StartTraining',
            [dataset: dataset, config: config, display_name: displayName])
    }

    Map getJob(String name) {
        return call('TrainingService', 'GetJob', [name: name])
    }

    Map cancelJob(String name) {
        return call('TrainingService', 'CancelJob', [name: name])
    }

    /** WatchJob until the job is final; `onJob(Map job)` per update; returns the last job. */
    Map watchJob(String name, Closure onJob) {
        Map last = null
        serverStream('TrainingService', 'WatchJob', [name: name], settings.get('watchTimeoutSeconds'), { Map r ->
            last = (Map) r.get('job')
            onJob.call(last)
        })
        return last
    }

    /**
     * A model as the user wrote it: "models/{id}" or a bare id, both of which the server
     * accepts (the contract says so); the server's answers carry the full name.
     */
    static String modelName(String name) {
        return (name ?: '').trim()
    }

    /**
     * Names of the final job states, read from the contract: every Job.State numbered above
     * RUNNING (training_service.proto). WatchJob ends in one of them.
     */
    List<String> finalJobStates() {
        Descriptors.EnumDescriptor states = messages.get('milsil.v1.Job').findEnumTypeByName('State')
        int running = states.findValueByName('RUNNING').getNumber()
        List<String> names = []
        for (Descriptors.EnumValueDescriptor v : states.getValues()) {
            if (v.getNumber() > running) {
                names.add(v.getName())
            }
        }
        return names
    }

    // ------------------------------------------------------------------ pixels

    /** A RAW_RGB8 Tile map from any BufferedImage (alpha dropped) at level-0 (x, y). */
    static Map rgbTile(BufferedImage image, double x, double y, double downsample) {
        int w = image.getWidth()
        int h = image.getHeight()
        int[] argb = image.getRGB(0, 0, w, h, null, 0, w)
        byte[] data = new byte[w * h * 3]
        int j = 0
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i]
            data[j++] = (byte) ((p >> 16) & 0xff)
            data[j++] = (byte) ((p >> 8) & 0xff)
            data[j++] = (byte) (p & 0xff)
        }
        return [encoding: 'RAW_RGB8', data: data, width: w, height: h, x: x, y: y, downsample: downsample]
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

    // ------------------------------------------------------------------ errors

    static double toDouble(Object v) {
        if (v instanceof Number) {
            return ((Number) v).doubleValue()
        }
        return Double.parseDouble(v.toString().trim())
    }

    static String oneLine(String s) {
        return (s == null ? '' : s).replaceAll('\\s*[\\r\\n]+\\s*', ' ').trim()
    }

    Failure failure(Throwable t, Object timeoutSeconds) {
        if (t instanceof Failure) {
            return (Failure) t
        }
        Status status = statusOf(t)
        if (status == null) {
            return new Failure('ERROR', t.getClass().getSimpleName() + ': ' + t.getMessage())
        }
        String code = status.getCode().name()
        String desc = status.getDescription() ?: ''
        switch (status.getCode()) {
            case Status.Code.RESOURCE_EXHAUSTED:
                return new Failure(code, desc ?: code, isBusy(t, desc))
            case Status.Code.UNAVAILABLE:
                String why = status.getCause() != null ? status.getCause().getMessage() : desc
                if (desc && status.getCause() == null) {
                    // The server itself said so (e.g. draining): keep its words.
                    return new Failure(code, desc)
                }
                return new Failure(code, 'cannot reach the milsil server at ' + target + ' (' + why +
                    '); is `milsil serve` running there, and are server/trustCert right?')
            case Status.Code.DEADLINE_EXCEEDED:
                return new Failure(code, 'no answer from ' + target + ' within ' + timeoutSeconds +
                    ' s; raise the timeout in the settings')
            case Status.Code.UNAUTHENTICATED:
                return new Failure(code, desc + '; set token in the settings or MILSIL_TOKEN')
            default:
                return new Failure(code, desc ?: code)
        }
    }

    /** A RESOURCE_EXHAUSTED worth retrying: `milsil-retry: busy`, or gRPC's thread limit. */
    static boolean isBusy(Throwable t, String description) {
        Metadata trailers = Status.trailersFromThrowable(t)
        String hint = trailers == null ? null : trailers.get(RETRY_KEY)
        if (hint != null) {
            return hint.trim() == 'busy'
        }
        return (description ?: '').trim() == GRPC_CONCURRENCY_LIMIT
    }

    static Status statusOf(Throwable t) {
        Throwable c = t
        while (c != null) {
            if (c instanceof StatusRuntimeException) {
                return ((StatusRuntimeException) c).getStatus()
            }
            if (c instanceof StatusException) {
                return ((StatusException) c).getStatus()
            }
            c = c.getCause()
        }
        return null
    }

    /** The one line a script prints for any failure. */
    static String describe(Throwable t) {
        if (t instanceof Failure) {
            return t.getMessage()
        }
        Status status = statusOf(t)
        if (status != null) {
            return 'milsil: ' + status.getCode().name() + ': ' + oneLine(status.getDescription() ?: '')
        }
        return 'milsil: ERROR: ' + oneLine(t.getClass().getSimpleName() + ': ' + t.getMessage())
    }
}
