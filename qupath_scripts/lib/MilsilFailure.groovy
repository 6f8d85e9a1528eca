/*
 * MilsilFailure.groovy -- every failure of a milsil script as the one line a user sees,
 * "milsil: <CODE>: <what the server said>" (MilsilFailure.describe(Throwable) renders any
 * Throwable so; scripts print it in QuPath's log), and the gRPC status behind it: which
 * RESOURCE_EXHAUSTED means "busy, retry" (the trailing metadata `milsil-retry: busy`, or
 * gRPC's own "Concurrent RPC limit exceeded!") and which means "never" (too large). The
 * contract is documented in proto/milsil/v1/inference_service.proto.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

import io.grpc.Metadata
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.StatusRuntimeException

/** A failure already rendered as the one line a user sees. */
class MilsilFailure extends RuntimeException {

    /** Trailing-metadata key of the server's RESOURCE_EXHAUSTED: "busy" (retry) or "never". */
    static final Metadata.Key<String> RETRY_KEY = Metadata.Key.of('milsil-retry', Metadata.ASCII_STRING_MARSHALLER)
    /** What gRPC itself says when all of the server's RPC threads are taken (busy too). */
    static final String GRPC_CONCURRENCY_LIMIT = 'Concurrent RPC limit exceeded!'

    final String code
    final String detail
    /** The server was busy: the same call may succeed later. */
    final boolean busy

    MilsilFailure(String code, String message) {
        this(code, message, false)
    }

    MilsilFailure(String code, String message, boolean busy) {
        super('milsil: ' + code + ': ' + oneLine(message))
        this.code = code
        this.detail = oneLine(message)
        this.busy = busy
    }

    static String oneLine(String s) {
        return (s == null ? '' : s).replaceAll('\\s*[\\r\\n]+\\s*', ' ').trim()
    }

    /** `t` as a MilsilFailure: a call to `target` with a deadline of `timeoutSeconds` failed. */
    static MilsilFailure of(Throwable t, String target, Object timeoutSeconds) {
        if (t instanceof MilsilFailure) {
            return (MilsilFailure) t
        }
        Status status = statusOf(t)
        if (status == null) {
            return new MilsilFailure('ERROR', t.getClass().getSimpleName() + ': ' + t.getMessage())
        }
        String code = status.getCode().name()
        String desc = status.getDescription() ?: ''
        switch (status.getCode()) {
            case Status.Code.RESOURCE_EXHAUSTED:
                return new MilsilFailure(code, desc ?: code, isBusy(t, desc))
            case Status.Code.UNAVAILABLE:
                String why = status.getCause() != null ? status.getCause().getMessage() : desc
                if (desc && status.getCause() == null) {
                    // The server itself said so (e.g. draining): keep its words.
                    return new MilsilFailure(code, desc)
                }
                return new MilsilFailure(code, 'cannot reach the milsil server at ' + target + ' (' + why +
                    '); is `milsil serve` running there, and are server/trustCert right?')
            case Status.Code.DEADLINE_EXCEEDED:
                return new MilsilFailure(code, 'no answer from ' + target + ' within ' + timeoutSeconds +
                    ' s; raise the timeout in the settings')
            case Status.Code.UNAUTHENTICATED:
                return new MilsilFailure(code, desc + '; set token in the settings or MILSIL_TOKEN')
            default:
                return new MilsilFailure(code, desc ?: code)
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
        if (t instanceof MilsilFailure) {
            return t.getMessage()
        }
        Status status = statusOf(t)
        if (status != null) {
            return 'milsil: ' + status.getCode().name() + ': ' + oneLine(status.getDescription() ?: '')
        }
        return 'milsil: ERROR: ' + oneLine(t.getClass().getSimpleName() + ': ' + t.getMessage())
    }
}
