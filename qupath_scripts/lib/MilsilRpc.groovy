/*
 * MilsilRpc.groovy -- the RPC layer under MilsilClient: one channel, calls of every shape
 * (unary, server-, client- and bidi-streaming) on maps, with deadlines and the busy retry.
 *
 *  - Every call has a deadline; inbound messages may be up to `maxMessageMb`; the bearer token
 *    travels as `authorization` metadata; TLS (optionally mutual) when a CA file is given.
 *  - Every failure becomes one MilsilFailure line ("milsil: <CODE>: ...").
 *  - Busy is not failure: a call the server refuses as busy (MilsilFailure.isBusy) is
 *    retried after a jittered exponential backoff until the call's deadline, printing a
 *    waiting line through `onWait` (scripts set it to their println); `milsil-retry: never`
 *    (too large) fails at once.
 * Messages are maps (MilsilCodec); the typed milsil API is MilsilClient, built on this class.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; no lambdas, no `var`).
 */

import com.google.protobuf.Descriptors
import com.google.protobuf.DynamicMessage
import io.grpc.CallOptions
import io.grpc.Channel
import io.grpc.ChannelCredentials
import io.grpc.ClientCall
import io.grpc.ClientInterceptors
import io.grpc.InsecureChannelCredentials
import io.grpc.ManagedChannel
import io.grpc.Metadata
import io.grpc.MethodDescriptor
import io.grpc.TlsChannelCredentials
import io.grpc.stub.ClientCallStreamObserver
import io.grpc.stub.ClientCalls
import io.grpc.stub.MetadataUtils
import io.grpc.stub.StreamObserver

import java.util.Random
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

class MilsilRpc {

    /** Backoff: a uniform delay up to min(MAX, FIRST * 2^attempt) seconds ("full jitter"). */
    static final double FIRST_DELAY_SECONDS = 0.2d
    static final double MAX_DELAY_SECONDS = 5.0d
    /** Time kept for the final try of a busy call: waits end this long before the deadline. */
    static final double LAST_TRY_SECONDS = 0.1d

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
                throw new MilsilFailure('DEADLINE_EXCEEDED', 'no answer from the server in time')
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

    /** Thrown inside send() when the server ended the call; never escapes streamCall. */
    static class EarlyEnd extends RuntimeException {
        EarlyEnd() {
            super('server ended the call', null, false, false)
        }
    }

    final String target
    final Map settings
    final ManagedChannel managed
    final Channel channel
    final MilsilCodec codec
    final Random random = new Random()
    /** Gets every waiting line ("milsil: waiting: ..."); null prints to standard output. */
    Closure onWait = null

    /** A channel to `s.server` with the settings `s` (MilsilSettings.withOverrides applied). */
    MilsilRpc(Map s) {
        settings = s
        target = (s.get('server') ?: '').toString().trim()
        if (!target) {
            throw new MilsilFailure('SETUP', 'no server address; set server = "host:port" in the settings')
        }
        codec = new MilsilCodec(MilsilCodec.findDescriptor((s.get('descriptor') ?: '') as String, (s.get('home') ?: '') as String))
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

    static ManagedChannel buildChannel(Map s) {
        Class builderClass = null
        List<String> names = ['io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder',
                              'io.grpc.netty.NettyChannelBuilder']
        List<ClassLoader> loaders = [MilsilRpc.class.getClassLoader(),
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
            throw new MilsilFailure('SETUP', 'grpc-netty (or grpc-netty-shaded) is not on the class path; ' +
                'copy the jars listed in qupath_scripts/README.md into QuPath\'s extensions folder')
        }
        ChannelCredentials credentials
        String trust = (s.get('trustCert') ?: '').toString()
        if (trust) {
            File ca = new File(trust)
            if (!ca.isFile()) {
                throw new MilsilFailure('SETUP', 'trustCert file not found: ' + trust)
            }
            TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(ca)
            String cert = (s.get('clientCert') ?: '').toString()
            String key = (s.get('clientKey') ?: '').toString()
            if (cert || key) {
                if (!(new File(cert).isFile() && new File(key).isFile())) {
                    throw new MilsilFailure('SETUP', 'clientCert and clientKey must both name PEM files, got "' +
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
                throw new MilsilFailure('SETUP', 'TLS needs ALPN, which this netty build lacks (' + e.getMessage() +
                    '); use grpc-netty-shaded from Maven Central as listed in qupath_scripts/README.md')
            }
            throw e
        }
        builder.maxInboundMessageSize((int) (MilsilSettings.num(s.get('maxMessageMb')) * 1024 * 1024))
        return (ManagedChannel) builder.build()
    }

    CallOptions options(Object seconds) {
        long nanos = (long) (MilsilSettings.num(seconds) * 1e9d)
        return CallOptions.DEFAULT.withDeadlineAfter(Math.max(1L, nanos), TimeUnit.NANOSECONDS)
    }

    /** Unary call: request map in, response map out. */
    Map call(String service, String name, Map request, Object timeoutSeconds = null) {
        Object seconds = timeoutSeconds == null ? settings.get('timeoutSeconds') : timeoutSeconds
        MethodDescriptor<DynamicMessage, DynamicMessage> m = codec.method(service, name)
        DynamicMessage req = MilsilCodec.build(codec.inputType(service, name), request)
        return (Map) retrying(name, seconds, { double left ->
            try {
                return MilsilCodec.toMap(ClientCalls.blockingUnaryCall(channel, m, options(left), req))
            } catch (Throwable t) {
                throw failure(t, seconds)
            }
        })
    }

    /** Server-streaming call: `onMessage(Map)` for every response; returns how many came. */
    int serverStream(String service, String name, Map request, Object timeoutSeconds, Closure onMessage) {
        MethodDescriptor<DynamicMessage, DynamicMessage> m = codec.method(service, name)
        DynamicMessage req = MilsilCodec.build(codec.inputType(service, name), request)
        return (int) retrying(name, timeoutSeconds, { double left ->
            int count = 0
            try {
                Iterator<DynamicMessage> it = ClientCalls.blockingServerStreamingCall(channel, m,
                    options(left), req)
                while (it.hasNext()) {
                    onMessage.call(MilsilCodec.toMap(it.next()))
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
            throw new MilsilFailure('INTERNAL', service + '.' + name + ' ended without a response')
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
        MethodDescriptor<DynamicMessage, DynamicMessage> m = codec.method(service, name)
        Descriptors.Descriptor input = codec.inputType(service, name)
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
            DynamicMessage dm = MilsilCodec.build(input, msg)
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
                onMessage.call(MilsilCodec.toMap((DynamicMessage) ready))
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
                onMessage.call(MilsilCodec.toMap(r))
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
        long deadline = started + (long) (MilsilSettings.num(timeoutSeconds) * 1e9d)
        int n = 0
        while (true) {
            // The first try gets the caller's deadline exactly (a tiny one must still expire).
            double left = n == 0 ? MilsilSettings.num(timeoutSeconds) : Math.max(1e-9d, (deadline - System.nanoTime()) / 1e9d)
            MilsilFailure f
            try {
                return attempt.call(left)
            } catch (Throwable t) {
                f = failure(t, timeoutSeconds)
            }
            if (!f.busy || !MilsilSettings.flag(settings, 'retryBusy')) {
                throw f
            }
            double delay = random.nextDouble() * Math.min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * Math.pow(2.0d, n))
            n++
            // The last try still runs before the deadline: a wait that would pass it is
            // shortened; with too little time left for a try the busy answer is the result.
            double remaining = (deadline - System.nanoTime()) / 1e9d
            if (remaining <= LAST_TRY_SECONDS) {
                long waited = Math.round((System.nanoTime() - started) / 1e9d)
                throw new MilsilFailure(f.code, f.detail + ' (still busy after waiting ' + waited +
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

    MilsilFailure failure(Throwable t, Object timeoutSeconds) {
        return MilsilFailure.of(t, target, timeoutSeconds)
    }
}
